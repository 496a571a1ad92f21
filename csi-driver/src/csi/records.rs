//! Volume records: one JSON file per published volume under `<state dir>/records/`, written
//! atomically, so a restarted plugin knows every volume to re-serve.
//!
//! The pod's own token (audience `wimsey`, bound to the pod, short-lived) is kept beside the
//! record in a root-only `<volume_id>.token` file, never in the record and never in a log: without
//! it a restarted plugin could not ask for the pod's identities until kubelet's next republish,
//! which can be a minute or more away. A token past its `exp` is not loaded.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use wimsey_core::renewal::token_lifetime;
use zeroize::Zeroizing;

use super::error::CsiError;
use super::request::PublishSpec;
use crate::identity::PodInfo;
use crate::volume_mode::VolumeMode;

/// What the plugin remembers about a published volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub volume_id: String,
    pub target_path: PathBuf,
    pub mode: VolumeMode,
    pub pod: Option<RecordedPod>,
    pub attributes: BTreeMap<String, String>,
    pub fs_group: Option<u32>,
}

/// The pod of a volume, without its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

impl VolumeRecord {
    pub fn from_spec(spec: &PublishSpec) -> Self {
        Self {
            volume_id: spec.volume_id.clone(),
            target_path: spec.target.clone(),
            mode: spec.mode,
            pod: spec.pod.as_ref().map(|pod| RecordedPod {
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                service_account: pod.service_account.clone(),
            }),
            attributes: spec.attributes.clone(),
            fs_group: spec.fs_group,
        }
    }

    /// The pod to re-attach after a restart, without its token (see [`RecordStore::read_token`]).
    pub fn pod_info(&self) -> Option<PodInfo> {
        self.pod.as_ref().map(|pod| PodInfo {
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            service_account: pod.service_account.clone(),
            token: None,
        })
    }
}

/// A record file and what reading it gave.
pub type LoadedRecord = (PathBuf, Result<VolumeRecord, CsiError>);

/// The directory of volume records.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    /// Opens (creating, mode 0700) the record directory.
    pub fn open(dir: PathBuf) -> Result<Self, CsiError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(CsiError::io("create", &dir))?;
        Ok(Self { dir })
    }

    fn path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.json"))
    }

    /// Writes the record: a temp file renamed over the old one.
    pub fn write(&self, record: &VolumeRecord) -> Result<(), CsiError> {
        let path = self.path(&record.volume_id);
        let json = serde_json::to_vec_pretty(record).map_err(|source| CsiError::Record {
            path: path.clone(),
            source,
        })?;
        let staged = self.dir.join(format!(".{}.json.tmp", record.volume_id));
        replace_private_file(&staged, &path, &json)
    }

    /// Removes the record and the pod's token; missing ones are fine.
    pub fn remove(&self, volume_id: &str) -> Result<(), CsiError> {
        for path in [self.path(volume_id), self.token_path(volume_id)] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(CsiError::io("remove", &path)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn token_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.token"))
    }

    /// Keeps the pod's latest token (mode 0600, atomically replaced).
    pub fn write_token(&self, volume_id: &str, token: &str) -> Result<(), CsiError> {
        let staged = self.dir.join(format!(".{volume_id}.token.tmp"));
        replace_private_file(&staged, &self.token_path(volume_id), token.as_bytes())
    }

    /// The pod's recorded token, if there is one and its `exp` (read, not verified: the operator
    /// verifies it) is after `now`.
    pub fn read_token(&self, volume_id: &str, now: SystemTime) -> Option<Zeroizing<String>> {
        let token = Zeroizing::new(fs::read_to_string(self.token_path(volume_id)).ok()?);
        token_unexpired(&token, now).then_some(token)
    }

    /// Every record, each with its parse result (a bad file is reported, not fatal).
    pub fn load_all(&self) -> Result<Vec<LoadedRecord>, CsiError> {
        let entries = fs::read_dir(&self.dir).map_err(CsiError::io("list", &self.dir))?;
        let mut records = Vec::new();
        for entry in entries {
            let path = entry.map_err(CsiError::io("list", &self.dir))?.path();
            let is_record = path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
            if is_record {
                let record = read_record(&path);
                records.push((path, record));
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(records)
    }
}

/// Writes `contents` to `staged` (mode 0600), then renames it over `path`: a reader sees the old
/// file or the new one, never a partial one.
fn replace_private_file(staged: &Path, path: &Path, contents: &[u8]) -> Result<(), CsiError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(staged)
        .map_err(CsiError::io("create", staged))?;
    // No fsync: records must survive a plugin restart, not a node crash (which takes the mounts
    // with it, and kubelet publishes again after a reboot); fsync would cost the publish path
    // milliseconds.
    file.write_all(contents)
        .map_err(CsiError::io("write", staged))?;
    fs::rename(staged, path).map_err(CsiError::io("rename into", path))
}

/// Whether a JWT's `exp` claim is after `now` (false when it has none or cannot be read).
pub fn token_unexpired(token: &str, now: SystemTime) -> bool {
    token_lifetime(token).is_some_and(|lifetime| lifetime.expires_at > now)
}

fn read_record(path: &Path) -> Result<VolumeRecord, CsiError> {
    let bytes = fs::read(path).map_err(CsiError::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| CsiError::Record {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(id: &str) -> VolumeRecord {
        VolumeRecord {
            volume_id: id.into(),
            target_path: "/t".into(),
            mode: VolumeMode::Files,
            pod: Some(RecordedPod {
                uid: "u".into(),
                namespace: "n".into(),
                name: "p".into(),
                service_account: "s".into(),
            }),
            attributes: BTreeMap::from([("mode".into(), "files".into())]),
            fs_group: Some(7),
        }
    }

    #[test]
    fn round_trips_and_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RecordStore::open(dir.path().join("records")).expect("open");
        store.write(&record("b")).expect("write");
        store.write(&record("a")).expect("write");
        std::fs::write(dir.path().join("records/c.json"), "{").expect("bad file");
        let loaded = store.load_all().expect("load");
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded[0].1.as_ref().expect("a"), &record("a"));
        assert!(matches!(loaded[2].1, Err(CsiError::Record { .. })));
        store.remove("a").expect("remove");
        store.remove("a").expect("remove twice");
        assert_eq!(store.load_all().expect("load").len(), 2);
        let json = std::fs::read_to_string(dir.path().join("records/b.json")).expect("read");
        assert!(json.contains("\"mode\": \"files\""), "{json}");
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn jwt_with_exp(exp: u64) -> String {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"k"}"#),
            b64(&format!(r#"{{"aud":["wimsey"],"exp":{exp}}}"#)),
            b64("signature")
        )
    }

    #[test]
    fn keeps_an_unexpired_token_beside_the_record_and_removes_it_with_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RecordStore::open(dir.path().join("records")).expect("open");
        store.write(&record("v")).expect("write");
        store.write_token("v", &jwt_with_exp(2_000)).expect("token");
        let path = dir.path().join("records/v.token");
        let mode = std::fs::metadata(&path)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Not a record: load_all skips it.
        assert_eq!(store.load_all().expect("load").len(), 1);
        assert_eq!(
            store
                .read_token("v", at(1_999))
                .as_deref()
                .map(String::as_str),
            Some(jwt_with_exp(2_000).as_str())
        );
        assert!(store.read_token("v", at(2_000)).is_none(), "expired at exp");
        assert!(store.read_token("other", at(0)).is_none());
        store.remove("v").expect("remove");
        assert!(!path.exists());
    }

    #[test]
    fn a_token_without_exp_is_not_loaded() {
        assert!(!token_unexpired("not a jwt", at(0)));
        assert!(token_unexpired(&jwt_with_exp(10), at(9)));
    }
}
