//! Everything the authority signs, in one place: X.509-SVIDs from CSRs, JWT-SVIDs, WIT-SVIDs, node
//! SVIDs and the operator's own serving SVID, each with its lifetime from the issuance policy
//! ([`TtlPolicy`]). The node API decides who may have what and calls this; it never touches keys
//! or lifetimes itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use wimsey_core::SpiffeId;
use wimsey_core::entries::Entry;
use wimsey_core::issuance::TtlPolicy;
use wimsey_core::jose::PublicJwk;
use wimsey_core::jose::jwt_svid::{JwtSvidClaims, mint_jwt_svid};
use wimsey_core::jose::wimse::{WitSvidClaims, mint_wit_svid};
use wimsey_core::oidc::IssuerUrl;
use wimsey_core::x509::{IssuedSvid, SvidRequest, VerifiedCsr};

use super::SigningMaterial;

/// Why the authority did not sign.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The workload's public key cannot be bound into a WIT-SVID.
    #[error("workload key: {0}")]
    WorkloadKey(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A signed token and when it expires.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: SystemTime,
}

/// The authority's signing material of one moment, with the lifetimes to sign with. Cheap to
/// build per call: the material is shared.
#[derive(Debug, Clone)]
pub struct Issuer {
    material: Arc<SigningMaterial>,
    lifetimes: IssuerLifetimes,
    /// The `iss` of JWT-SVIDs, when OIDC discovery is on.
    jwt_issuer: Option<IssuerUrl>,
}

/// How long each kind of SVID lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuerLifetimes {
    /// Workload X.509-, JWT- and WIT-SVIDs: from the entry, the defaults and the caps.
    pub workload: TtlPolicy,
    pub node_svid_ttl: Duration,
    pub serving_svid_ttl: Duration,
}

impl Issuer {
    pub fn new(
        material: Arc<SigningMaterial>,
        lifetimes: IssuerLifetimes,
        jwt_issuer: Option<IssuerUrl>,
    ) -> Self {
        Self {
            material,
            lifetimes,
            jwt_issuer,
        }
    }

    /// The material signed with, and the bundle that validates it.
    pub fn material(&self) -> &Arc<SigningMaterial> {
        &self.material
    }

    /// An X.509-SVID for `entry`, for the key of a CSR already verified.
    pub fn x509_svid(
        &self,
        entry: &Entry,
        csr: &VerifiedCsr,
        now: SystemTime,
    ) -> Result<IssuedSvid, IssueError> {
        let request = SvidRequest {
            spiffe_id: &entry.spiffe_id,
            dns_names: &entry.dns_names,
            ttl: self.lifetimes.workload.x509_svid_ttl(entry.x509_svid_ttl),
        };
        self.material
            .ca
            .issue_for_verified_csr(csr, &request, now)
            .map_err(|e| IssueError::Signing(e.to_string()))
    }

    /// A JWT-SVID for `entry` with `audience`, with `iss` when an issuer URL is configured.
    pub fn jwt_svid(
        &self,
        entry: &Entry,
        audience: &[String],
        now: SystemTime,
    ) -> Result<IssuedToken, IssueError> {
        let expires_at = now + self.lifetimes.workload.jwt_svid_ttl(entry.jwt_svid_ttl);
        let claims = JwtSvidClaims {
            spiffe_id: &entry.spiffe_id,
            audience,
            issued_at: now,
            expires_at,
            jti: None,
            issuer: self.jwt_issuer.as_ref().map(IssuerUrl::as_str),
        };
        let token = mint_jwt_svid(&self.material.jwt.key, &self.material.jwt.kid, &claims)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(IssuedToken { token, expires_at })
    }

    /// A WIT-SVID for `entry`, bound to the workload's `workload_key`.
    pub fn wit_svid(
        &self,
        entry: &Entry,
        workload_key: &PublicJwk,
        now: SystemTime,
    ) -> Result<IssuedToken, IssueError> {
        let expires_at = now + self.lifetimes.workload.wit_svid_ttl(entry.x509_svid_ttl);
        let claims = WitSvidClaims {
            spiffe_id: &entry.spiffe_id,
            workload_key,
            issued_at: now,
            expires_at,
            jti: None,
        };
        let token = mint_wit_svid(&self.material.wit.key, &self.material.wit.kid, &claims)
            .map_err(|e| IssueError::WorkloadKey(e.to_string()))?;
        Ok(IssuedToken { token, expires_at })
    }

    /// A node SVID (`node_id`, from `wimsey_core::reserved`) for the plugin's node key.
    pub fn node_svid(
        &self,
        node_id: &SpiffeId,
        csr: &VerifiedCsr,
        now: SystemTime,
    ) -> Result<IssuedSvid, IssueError> {
        let request = SvidRequest {
            spiffe_id: node_id,
            dns_names: &[],
            ttl: self.lifetimes.node_svid_ttl,
        };
        self.material
            .ca
            .issue_for_verified_csr(csr, &request, now)
            .map_err(|e| IssueError::Signing(e.to_string()))
    }

    /// The operator's own serving SVID (`operator_id`, from `wimsey_core::reserved`), for a key
    /// it generated.
    pub fn serving_svid(
        &self,
        operator_id: &SpiffeId,
        spki_der: &[u8],
        now: SystemTime,
    ) -> Result<IssuedSvid, IssueError> {
        let request = SvidRequest {
            spiffe_id: operator_id,
            dns_names: &[],
            ttl: self.lifetimes.serving_svid_ttl,
        };
        self.material
            .ca
            .issue_for_public_key(spki_der, &request, now)
            .map_err(|e| IssueError::Signing(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use wimsey_core::TrustDomain;
    use wimsey_core::entries::Selector;
    use wimsey_core::jose::CompactJws;
    use wimsey_core::keys::{KeyAlgorithm, SigningKey};
    use wimsey_core::renewal::token_lifetime;
    use wimsey_core::x509::{build_csr, verify_csr};

    use super::*;
    use crate::authority::state::{Lifetimes, StoredAuthority, rotate};

    const MINUTE: Duration = Duration::from_secs(60);

    /// A whole second, as certificates carry it.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    /// Every lifetime different, so a swapped one shows.
    fn issuer() -> Issuer {
        issuer_with(None)
    }

    fn issuer_with(jwt_issuer: Option<IssuerUrl>) -> Issuer {
        let lifetimes = Lifetimes {
            ca_ttl: Duration::from_secs(24 * 3600),
            jwt_key_ttl: Duration::from_secs(6 * 3600),
            propagation_delay: Duration::from_secs(3600),
            max_x509_svid_ttl: 30 * MINUTE,
            max_jwt_svid_ttl: 5 * MINUTE,
            node_svid_ttl: 15 * MINUTE,
            server_svid_ttl: 20 * MINUTE,
        };
        let mut stored = StoredAuthority::empty(&td());
        rotate(&mut stored, &td(), &lifetimes, now()).unwrap();
        let material = SigningMaterial::from_stored(&stored, &td(), &lifetimes, now()).unwrap();
        let workload = TtlPolicy {
            default_x509_svid_ttl: 10 * MINUTE,
            default_jwt_svid_ttl: 2 * MINUTE,
            max_x509_svid_ttl: 30 * MINUTE,
            max_jwt_svid_ttl: 5 * MINUTE,
        };
        Issuer::new(
            Arc::new(material),
            IssuerLifetimes {
                workload,
                node_svid_ttl: 15 * MINUTE,
                serving_svid_ttl: 20 * MINUTE,
            },
            jwt_issuer,
        )
    }

    fn entry(x509_ttl: Duration, jwt_ttl: Duration) -> Entry {
        Entry {
            spiffe_id: SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap(),
            parent_id: SpiffeId::parse("spiffe://example.org/spire/agent/x").unwrap(),
            selectors: vec![Selector::new("k8s", "ns:a")],
            x509_svid_ttl: x509_ttl,
            jwt_svid_ttl: jwt_ttl,
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            dns_names: Vec::new(),
            hint: String::new(),
            store_svid: false,
        }
    }

    fn csr(id: &SpiffeId) -> VerifiedCsr {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        verify_csr(&build_csr(&key, id, &[]).unwrap()).unwrap()
    }

    fn lives(svid: &IssuedSvid) -> Duration {
        svid.not_after.duration_since(now()).unwrap()
    }

    fn token_lives(token: &IssuedToken) -> Duration {
        let stated = token_lifetime(&token.token).unwrap().expires_at;
        assert_eq!(stated, token.expires_at, "the token says what we report");
        stated.duration_since(now()).unwrap()
    }

    #[test]
    fn each_kind_of_svid_gets_its_own_lifetime() {
        let issuer = issuer();
        let unset = entry(Duration::ZERO, Duration::ZERO);
        let long = entry(
            4 * 3600 * Duration::from_secs(1),
            3600 * Duration::from_secs(1),
        );
        let id = &unset.spiffe_id;

        let x509 = issuer.x509_svid(&unset, &csr(id), now()).unwrap();
        assert_eq!(lives(&x509), 10 * MINUTE, "X.509: the default");
        let x509 = issuer.x509_svid(&long, &csr(id), now()).unwrap();
        assert_eq!(lives(&x509), 30 * MINUTE, "X.509: capped");

        let jwt = issuer.jwt_svid(&unset, &["svc".into()], now()).unwrap();
        assert_eq!(token_lives(&jwt), 2 * MINUTE, "JWT: the default");
        let jwt = issuer.jwt_svid(&long, &["svc".into()], now()).unwrap();
        assert_eq!(token_lives(&jwt), 5 * MINUTE, "JWT: capped");

        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let workload_key = PublicJwk::for_signing_key(&key);
        let wit = issuer.wit_svid(&unset, &workload_key, now()).unwrap();
        assert_eq!(token_lives(&wit), 10 * MINUTE, "WIT: as the X.509-SVID");

        let node_id = SpiffeId::parse("spiffe://example.org/spire/agent/wimsey/c/n").unwrap();
        let node = issuer.node_svid(&node_id, &csr(&node_id), now()).unwrap();
        assert_eq!(lives(&node), 15 * MINUTE, "node SVID");
        assert_eq!(node.spiffe_id, node_id);

        let operator = SpiffeId::parse("spiffe://example.org/wimsey/operator").unwrap();
        let serving = issuer
            .serving_svid(&operator, &key.public_key_spki_der(), now())
            .unwrap();
        assert_eq!(lives(&serving), 20 * MINUTE, "serving SVID");
        assert_eq!(serving.spiffe_id, operator);
    }

    #[test]
    fn jwt_svids_carry_iss_only_when_an_issuer_url_is_set() {
        let unset = entry(Duration::ZERO, Duration::ZERO);
        let claims = |issuer: &Issuer| {
            let jwt = issuer.jwt_svid(&unset, &["svc".into()], now()).unwrap();
            CompactJws::parse(&jwt.token).unwrap().into_claims()
        };
        assert!(!claims(&issuer()).contains_key("iss"));
        let url = IssuerUrl::parse("https://oidc.example.org").unwrap();
        let with_iss = claims(&issuer_with(Some(url)));
        assert_eq!(with_iss["iss"], "https://oidc.example.org");
        assert_eq!(with_iss["sub"], "spiffe://example.org/ns/a/sa/b");
    }
}
