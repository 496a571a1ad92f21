//! DNS name syntax, the one rule for every DNS name we put in an entry or a certificate.

/// The check SPIRE Server makes on an entry's DNS names, and the one X.509-SVID DNS SANs must
/// pass: 1-253 bytes of labels of letters, digits and hyphens, each 1-63 bytes and not starting or
/// ending with a hyphen; a `*` only as the whole first label. The error says which rule failed.
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
