//! DNS names on entries: the names `autoPopulateDNSNames` derives from a Service. Their syntax is
//! checked at render time with [`crate::dns_name::validate_dns_name`] (SPIRE's rule), so a bad name
//! shows on the ClusterSPIFFEID (e.g. a `<no value>` from a missing label) instead of failing at
//! entry creation, where spire-controller-manager leaves it to SPIRE.

/// The four names spire-controller-manager adds for each Service whose endpoints reference the
/// pod: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<clusterDomain>` (the last only when the
/// cluster domain is known).
pub fn service_dns_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    let mut names = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
    ];
    if !cluster_domain.is_empty() {
        names.push(format!("{service}.{namespace}.svc.{cluster_domain}"));
    }
    names
}
