//! DNS names on entries: the names `autoPopulateDNSNames` derives from a Service, and the
//! syntax check SPIRE applies when an entry is created.

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

/// The check SPIRE Server makes on an entry's DNS names (labels of letters, digits and hyphens,
/// not starting or ending with a hyphen, at most 63 bytes; a `*` only as the whole first label).
/// spire-controller-manager leaves this to SPIRE, which refuses the entry at creation; we refuse
/// at render time so the failure shows on the ClusterSPIFFEID (e.g. a `<no value>` from a missing
/// label).
pub fn validate_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty DNS name");
    }
    if name.len() > 253 {
        return Err("DNS name longer than 253 bytes");
    }
    for (index, label) in name.split('.').enumerate() {
        if label.is_empty() {
            return Err("empty label");
        }
        if label == "*" {
            if index != 0 {
                return Err("wildcard must be the first label");
            }
            continue;
        }
        if label.len() > 63 {
            return Err("label longer than 63 bytes");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("labels may contain only letters, digits and hyphens");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("labels may not start or end with a hyphen");
        }
    }
    Ok(())
}
