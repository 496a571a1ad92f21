//! Plain functions from a pod's [`IssuedIdentities`] to Workload API messages. No I/O, no clock:
//! the service calls these for every snapshot it streams.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use serde_json::{Map, Value};
use wimsey_core::bundle::{BundleSource, TrustDomainBundle};
use wimsey_core::jose::jwt_svid::{JwtSvidValidation, validate_jwt_svid};
use wimsey_core::x509::concat_der;
use wimsey_core::{SpiffeId, TrustDomain};
use wimsey_proto::workload as pb;

use super::error::WorkloadApiError;
use crate::identity::{IdentitySnapshot, IssuedIdentities};

/// The issued identities of a snapshot, or why there are none.
pub fn issued(snapshot: &IdentitySnapshot) -> Result<&IssuedIdentities, WorkloadApiError> {
    match snapshot {
        IdentitySnapshot::NotReady => Err(WorkloadApiError::NotReady),
        IdentitySnapshot::NoIdentity => Err(WorkloadApiError::NoIdentity),
        IdentitySnapshot::Issued(identities) => Ok(identities),
    }
}

/// Bundle-map key for a trust domain: its SPIFFE ID, `spiffe://<td>`, as SPIRE emits it.
pub fn bundle_key(trust_domain: &TrustDomain) -> String {
    trust_domain.id_string()
}

impl BundleSource for IssuedIdentities {
    fn bundle_for(&self, trust_domain: &TrustDomain) -> Option<&TrustDomainBundle> {
        IssuedIdentities::bundle_for(self, trust_domain)
    }
}

/// `X509SVIDResponse`: every X.509-SVID (default first, later duplicates of a non-empty hint
/// dropped so hints stay unique), each with its own trust domain's bundle, plus every federated
/// X.509 bundle.
pub fn x509_svid_response(
    identities: &IssuedIdentities,
) -> Result<pb::X509svidResponse, WorkloadApiError> {
    let mut seen_hints = BTreeSet::new();
    let svids: Vec<pb::X509svid> = identities
        .x509_svids
        .iter()
        .filter(|svid| svid.hint.is_empty() || seen_hints.insert(svid.hint.as_str()))
        .map(|svid| {
            let bundle = identities
                .bundle_for(&svid.spiffe_id.trust_domain())
                .unwrap_or(&identities.bundle);
            pb::X509svid {
                spiffe_id: svid.spiffe_id.as_str().to_owned(),
                x509_svid: concat_der(&svid.chain),
                x509_svid_key: svid.private_key_pkcs8.to_vec(),
                bundle: bundle.x509_authorities_der(),
                hint: svid.hint.clone(),
            }
        })
        .collect();
    if svids.is_empty() {
        return Err(WorkloadApiError::NoIdentity);
    }
    let federated_bundles = identities
        .all_bundles()
        .skip(1)
        .map(|b| (bundle_key(&b.trust_domain), b.x509_authorities_der()))
        .collect();
    Ok(pb::X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    })
}

/// `X509BundlesResponse`: the X.509 bundle of every trust domain the pod trusts, ours included.
pub fn x509_bundles_response(identities: &IssuedIdentities) -> pb::X509BundlesResponse {
    pb::X509BundlesResponse {
        crl: Vec::new(),
        bundles: identities
            .all_bundles()
            .map(|b| (bundle_key(&b.trust_domain), b.x509_authorities_der()))
            .collect(),
    }
}

/// `JWTBundlesResponse`: each trust domain's JWT authorities as a JWK Set, every key with kid.
pub fn jwt_bundles_response(
    identities: &IssuedIdentities,
) -> Result<pb::JwtBundlesResponse, WorkloadApiError> {
    let bundles = identities
        .all_bundles()
        .map(|b| {
            let json = b.to_jwt_bundle_json().map_err(WorkloadApiError::Bundle)?;
            Ok((bundle_key(&b.trust_domain), json.into_bytes()))
        })
        .collect::<Result<HashMap<_, _>, WorkloadApiError>>()?;
    Ok(pb::JwtBundlesResponse { bundles })
}

/// `WITSVIDResponse`: the WIT-SVIDs, or only the one for `requested`.
pub fn wit_svid_response(
    identities: &IssuedIdentities,
    requested: Option<&SpiffeId>,
) -> Result<pb::WitsvidResponse, WorkloadApiError> {
    let wit_svids = identities
        .wit_svids
        .as_ref()
        .ok_or(WorkloadApiError::WitNotServed)?;
    let mut seen_hints = BTreeSet::new();
    let svids: Vec<pb::Witsvid> = wit_svids
        .iter()
        .filter(|svid| requested.is_none_or(|id| svid.spiffe_id == *id))
        .filter(|svid| svid.hint.is_empty() || seen_hints.insert(svid.hint.as_str()))
        .map(|svid| pb::Witsvid {
            spiffe_id: svid.spiffe_id.as_str().to_owned(),
            wit_svid: svid.token.to_string(),
            wit_svid_key: svid.private_jwk.to_string(),
            hint: svid.hint.clone(),
        })
        .collect();
    match (svids.is_empty(), requested) {
        (false, _) => Ok(pb::WitsvidResponse { svids }),
        (true, Some(_)) => Err(WorkloadApiError::NotEntitled),
        (true, None) => Err(WorkloadApiError::NoIdentity),
    }
}

/// `WITBundlesResponse`: each trust domain's WIT authorities as a JWK Set (a string value).
pub fn wit_bundles_response(
    identities: &IssuedIdentities,
) -> Result<pb::WitBundlesResponse, WorkloadApiError> {
    if identities.wit_svids.is_none() {
        return Err(WorkloadApiError::WitNotServed);
    }
    let bundles = identities
        .all_bundles()
        .map(|b| {
            let json = b.to_wit_bundle_json().map_err(WorkloadApiError::Bundle)?;
            Ok((bundle_key(&b.trust_domain), json))
        })
        .collect::<Result<HashMap<_, _>, WorkloadApiError>>()?;
    Ok(pb::WitBundlesResponse { bundles })
}

/// The optional `spiffe_id` of a request: empty means "all identities".
pub fn requested_spiffe_id(raw: &str) -> Result<Option<SpiffeId>, WorkloadApiError> {
    if raw.is_empty() {
        return Ok(None);
    }
    SpiffeId::parse(raw)
        .map(Some)
        .map_err(WorkloadApiError::InvalidRequestedId)
}

/// A JWT-SVID audience list must be non-empty and hold no empty value.
pub fn check_audience(audience: &[String]) -> Result<(), WorkloadApiError> {
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(WorkloadApiError::MissingAudience);
    }
    Ok(())
}

/// The identities to mint JWT-SVIDs for, with their hints: all of them, or only `requested`.
/// A requested ID the pod does not hold is `NotEntitled`, whose message names no identity.
pub fn jwt_svid_targets<'a>(
    identities: &'a IssuedIdentities,
    requested: Option<&SpiffeId>,
) -> Result<Vec<(&'a SpiffeId, &'a str)>, WorkloadApiError> {
    let mut seen = BTreeSet::new();
    let targets: Vec<_> = identities
        .x509_svids
        .iter()
        .filter(|svid| requested.is_none_or(|id| svid.spiffe_id == *id))
        // One JWT-SVID per identity, even if it holds several X.509-SVIDs.
        .filter(|svid| seen.insert(svid.spiffe_id.as_str()))
        .map(|svid| (&svid.spiffe_id, svid.hint.as_str()))
        .collect();
    match (targets.is_empty(), requested) {
        (false, _) => Ok(targets),
        (true, Some(_)) => Err(WorkloadApiError::NotEntitled),
        (true, None) => Err(WorkloadApiError::NoIdentity),
    }
}

/// `ValidateJWTSVIDResponse` for `token` validated for `audience` at `now` against the pod's
/// bundles (the subject's trust domain's bundle, ours or federated).
pub fn validate_jwt_svid_response(
    identities: &IssuedIdentities,
    audience: &str,
    token: &str,
    now: SystemTime,
) -> Result<pb::ValidateJwtsvidResponse, WorkloadApiError> {
    if audience.is_empty() {
        return Err(WorkloadApiError::MissingAudience);
    }
    if token.is_empty() {
        return Err(WorkloadApiError::MissingSvid);
    }
    let validated = validate_jwt_svid(
        token,
        audience,
        identities,
        now,
        &JwtSvidValidation::default(),
    )
    .map_err(WorkloadApiError::InvalidJwtSvid)?;
    let mut claims = validated.claims;
    // A single-string `aud` is returned as a list, as SPIRE does.
    if let Some(Value::String(aud)) = claims.get("aud").cloned() {
        claims.insert("aud".into(), Value::Array(vec![Value::String(aud)]));
    }
    Ok(pb::ValidateJwtsvidResponse {
        spiffe_id: validated.spiffe_id.as_str().to_owned(),
        claims: Some(claims_struct(&claims)),
    })
}

/// JSON claims as a `google.protobuf.Struct`.
pub fn claims_struct(claims: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims
            .iter()
            .map(|(name, value)| (name.clone(), struct_value(value)))
            .collect(),
    }
}

fn struct_value(value: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        // Struct numbers are doubles, as in every JSON-to-Struct mapping.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(struct_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(claims_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wimsey_core::x509::CertDer;
    use zeroize::Zeroizing;

    use super::*;
    use crate::identity::X509SvidEntry;

    fn entry(id: &str, hint: &str) -> X509SvidEntry {
        X509SvidEntry {
            spiffe_id: SpiffeId::parse(id).expect("id"),
            chain: vec![CertDer::new(vec![0x30, 0x00])],
            private_key_pkcs8: Zeroizing::new(vec![1]),
            hint: hint.to_owned(),
        }
    }

    fn identities(svids: Vec<X509SvidEntry>) -> IssuedIdentities {
        let own = TrustDomain::new("example.org").expect("td");
        let partner = TrustDomain::new("partner.example").expect("td");
        let mut partner_bundle = TrustDomainBundle::new(partner.clone());
        partner_bundle.x509_authorities.push(vec![0x30, 0x01]);
        IssuedIdentities {
            bundle: TrustDomainBundle::new(own),
            federated_bundles: BTreeMap::from([(partner, partner_bundle)]),
            x509_svids: svids,
            wit_svids: None,
        }
    }

    #[test]
    fn duplicate_hints_keep_the_first_svid_and_empty_hints_are_never_duplicates() {
        let ids = identities(vec![
            entry("spiffe://example.org/a", "internal"),
            entry("spiffe://example.org/b", "internal"),
            entry("spiffe://example.org/c", ""),
            entry("spiffe://example.org/d", ""),
        ]);
        let response = x509_svid_response(&ids).expect("response");
        let got: Vec<_> = response
            .svids
            .iter()
            .map(|s| s.spiffe_id.as_str())
            .collect();
        assert_eq!(
            got,
            [
                "spiffe://example.org/a",
                "spiffe://example.org/c",
                "spiffe://example.org/d"
            ]
        );
        assert_eq!(
            response.federated_bundles.get("spiffe://partner.example"),
            Some(&vec![0x30, 0x01])
        );
        assert!(
            !response
                .federated_bundles
                .contains_key("spiffe://example.org")
        );
    }

    #[test]
    fn no_svids_is_no_identity_and_an_unknown_requested_id_is_not_entitled() {
        assert!(matches!(
            x509_svid_response(&identities(vec![])),
            Err(WorkloadApiError::NoIdentity)
        ));
        let ids = identities(vec![entry("spiffe://example.org/a", "")]);
        let other = SpiffeId::parse("spiffe://example.org/b").expect("id");
        assert!(matches!(
            jwt_svid_targets(&ids, Some(&other)),
            Err(WorkloadApiError::NotEntitled)
        ));
        assert!(matches!(
            wit_svid_response(&ids, None),
            Err(WorkloadApiError::WitNotServed)
        ));
        assert!(matches!(
            requested_spiffe_id("not an id"),
            Err(WorkloadApiError::InvalidRequestedId(_))
        ));
        assert!(requested_spiffe_id("").expect("empty").is_none());
    }

    #[test]
    fn claims_become_struct_values() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"sub":"spiffe://example.org/a","exp":17,"aud":["x"],"nested":{"ok":true,"n":null}}"#,
        )
        .expect("json");
        let s = claims_struct(&claims);
        use prost_types::value::Kind;
        assert_eq!(s.fields["exp"].kind, Some(Kind::NumberValue(17.0)));
        assert!(matches!(&s.fields["aud"].kind, Some(Kind::ListValue(l)) if l.values.len() == 1));
        let Some(Kind::StructValue(nested)) = &s.fields["nested"].kind else {
            panic!("nested object")
        };
        assert_eq!(nested.fields["ok"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(nested.fields["n"].kind, Some(Kind::NullValue(0)));
    }
}
