//! The SPIFFE IDs the system itself uses, built here and nowhere else, and reserved so that no
//! ClusterSPIFFEID or ClusterStaticEntry can render one of them for a workload.
//!
//! Two path namespaces are reserved, in every trust domain:
//! * `/spire`: SPIRE's own servers and agents (spire-controller-manager refuses it for workloads
//!   too). Wimsey's node IDs live here, as SPIRE agents' do: `/spire/agent/wimsey/<cluster>/<node>`.
//! * `/wimsey`: wimsey's own services: the node API's serving ID ([`OPERATOR_PATH`]), the future
//!   federation bundle endpoint ([`BUNDLE_ENDPOINT_PATH`]) and the placeholder a node puts in its
//!   attestation CSR ([`NODE_CSR_PLACEHOLDER_PATH`]). Reserving the whole namespace keeps IDs
//!   added later out of users' reach without another migration.
//!
//! A workload holding one of these IDs could impersonate the operator to every plugin, or a node
//! to the node API; refusing them at render time, with a status condition, is the only place the
//! user can see why.

use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The reserved path namespaces; an ID is reserved if its path is one of these or below one.
pub const RESERVED_NAMESPACES: [&str; 2] = ["/spire", "/wimsey"];

/// The operator's node API serving identity.
pub const OPERATOR_PATH: &str = "/wimsey/operator";
/// The trust bundle endpoint (SPIFFE federation), reserved ahead of its arrival.
pub const BUNDLE_ENDPOINT_PATH: &str = "/wimsey/bundle-endpoint";
/// The ID a plugin writes into its attestation CSR; the operator ignores it and signs the node ID.
pub const NODE_CSR_PLACEHOLDER_PATH: &str = "/wimsey/node";
/// Node IDs are `<NODE_ID_PREFIX>/<cluster>/<node name>`.
pub const NODE_ID_PREFIX: &str = "/spire/agent/wimsey";

/// `spiffe://<td>/wimsey/operator`.
pub fn operator_id(trust_domain: &TrustDomain) -> Result<SpiffeId, SpiffeIdError> {
    trust_domain.id_from_path(OPERATOR_PATH)
}

/// `spiffe://<td>/wimsey/bundle-endpoint`.
pub fn bundle_endpoint_id(trust_domain: &TrustDomain) -> Result<SpiffeId, SpiffeIdError> {
    trust_domain.id_from_path(BUNDLE_ENDPOINT_PATH)
}

/// `spiffe://<td>/wimsey/node`.
pub fn node_csr_placeholder_id(trust_domain: &TrustDomain) -> Result<SpiffeId, SpiffeIdError> {
    trust_domain.id_from_path(NODE_CSR_PLACEHOLDER_PATH)
}

/// A node's SVID ID: `spiffe://<td>/spire/agent/wimsey/<cluster>/<node name>`. Node names are
/// DNS subdomains, so they are valid path segments as they are; anything else is refused.
pub fn node_id(
    trust_domain: &TrustDomain,
    cluster: &str,
    node: &str,
) -> Result<SpiffeId, SpiffeIdError> {
    trust_domain.id_from_segments(&["spire", "agent", "wimsey", cluster, node])
}

/// The node name in a node ID of `trust_domain` and `cluster`, or `None`.
pub fn node_from_id(trust_domain: &TrustDomain, cluster: &str, id: &SpiffeId) -> Option<String> {
    if !id.is_member_of(trust_domain) {
        return None;
    }
    let rest = id.path().strip_prefix(NODE_ID_PREFIX)?.strip_prefix('/')?;
    let (id_cluster, node) = rest.split_once('/')?;
    (id_cluster == cluster && !node.is_empty() && !node.contains('/')).then(|| node.to_owned())
}

/// The reserved namespace `path` falls in, if any (exact segment match: `/spirex` is free).
pub fn reserved_namespace(path: &str) -> Option<&'static str> {
    RESERVED_NAMESPACES.into_iter().find(|namespace| {
        path.strip_prefix(namespace)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The rule for IDs we register for workloads: in our trust domain, with a path, and outside
/// the namespaces reserved for the system's own identities.
pub fn check_workload_id(id: &SpiffeId, trust_domain: &TrustDomain) -> Result<(), SpiffeIdError> {
    if !id.is_member_of(trust_domain) {
        return Err(SpiffeIdError::NotInTrustDomain {
            id: id.to_string(),
            trust_domain: trust_domain.name().to_owned(),
        });
    }
    if id.is_root() {
        return Err(SpiffeIdError::RootPath(id.to_string()));
    }
    check_not_reserved(id)
}

/// Refuses an ID in a reserved namespace, whatever its trust domain.
pub fn check_not_reserved(id: &SpiffeId) -> Result<(), SpiffeIdError> {
    match reserved_namespace(id.path()) {
        Some(namespace) => Err(SpiffeIdError::ReservedPath {
            id: id.to_string(),
            namespace,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn system_ids_are_built_here_and_all_reserved() {
        let ids = [
            operator_id(&td()).unwrap(),
            bundle_endpoint_id(&td()).unwrap(),
            node_csr_placeholder_id(&td()).unwrap(),
            node_id(&td(), "c1", "node-a.example").unwrap(),
        ];
        let expected = [
            "spiffe://example.org/wimsey/operator",
            "spiffe://example.org/wimsey/bundle-endpoint",
            "spiffe://example.org/wimsey/node",
            "spiffe://example.org/spire/agent/wimsey/c1/node-a.example",
        ];
        for (id, expected) in ids.iter().zip(expected) {
            assert_eq!(id.as_str(), expected);
            let error = check_not_reserved(id).unwrap_err();
            assert_eq!(error.label(), "reserved_path");
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn only_whole_segments_are_reserved() {
        assert_eq!(reserved_namespace("/spire"), Some("/spire"));
        assert_eq!(reserved_namespace("/wimsey/anything"), Some("/wimsey"));
        assert_eq!(reserved_namespace("/spirex"), None);
        assert_eq!(reserved_namespace("/wimsey-system/sa/x"), None);
        assert_eq!(reserved_namespace("/ns/wimsey/sa/x"), None);
        assert_eq!(reserved_namespace(""), None);
    }

    #[test]
    fn node_ids_round_trip_and_others_are_not_nodes() {
        let id = node_id(&td(), "c1", "n1").unwrap();
        assert_eq!(node_from_id(&td(), "c1", &id).as_deref(), Some("n1"));
        assert_eq!(node_from_id(&td(), "c2", &id), None, "other cluster");
        let other = TrustDomain::new("other.org").unwrap();
        assert_eq!(node_from_id(&other, "c1", &id), None, "other trust domain");
        for path in [
            "/spire/agent/wimsey/c1",
            "/spire/agent/wimsey/c1/n1/x",
            "/spire/agent/wimseyx/c1/n1",
        ] {
            let id = td().id_from_path(path).unwrap();
            assert_eq!(node_from_id(&td(), "c1", &id), None, "{path}");
        }
        assert!(node_id(&td(), "c1", "bad/name").is_err());
    }
    #[test]
    fn workload_id_rule_matches_spire() {
        let td = TrustDomain::new("example.org").expect("td");
        let check = |s: &str| check_workload_id(&SpiffeId::parse(s).expect("parse"), &td);
        check("spiffe://example.org/ns/default/sa/web").expect("workload");
        assert_eq!(
            check("spiffe://example.org").unwrap_err().label(),
            "root_path"
        );
        assert_eq!(
            check("spiffe://example.org/spire").unwrap_err().label(),
            "reserved_path"
        );
        assert_eq!(
            check("spiffe://example.org/spire/agent/x")
                .unwrap_err()
                .label(),
            "reserved_path"
        );
        check("spiffe://example.org/spirex").expect("only the exact namespace is reserved");
        assert_eq!(
            check("spiffe://other.org/a").unwrap_err().label(),
            "not_in_trust_domain"
        );
    }
}
