//! The subjectAltName of an SVID or a CSR: the SPIFFE ID as the one URI, then DNS names.

use super::X509Error;
use super::asn1::{self, TAG_SEQUENCE};
use crate::dns_name;
use crate::spiffe_id::SpiffeId;

/// GeneralNames: the SPIFFE ID as the one URI, then DNS names.
pub(crate) fn encode_san(id: &SpiffeId, dns_names: &[String]) -> Result<Vec<u8>, X509Error> {
    let mut names = Vec::with_capacity(
        id.as_str().len() + 4 + dns_names.iter().map(|d| d.len() + 4).sum::<usize>(),
    );
    asn1::push_tlv(&mut names, 0x86, id.as_str().as_bytes());
    for dns in dns_names {
        validate_dns_name(dns)?;
        asn1::push_tlv(&mut names, 0x82, dns.as_bytes());
    }
    Ok(asn1::tlv(TAG_SEQUENCE, &names))
}

/// A DNS SAN must pass the one DNS name rule ([`dns_name::validate_dns_name`]).
pub(crate) fn validate_dns_name(name: &str) -> Result<(), X509Error> {
    dns_name::validate_dns_name(name)
        .map_err(|_| X509Error::InvalidDnsName(name.chars().take(64).collect()))
}
