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
    ttl: TtlPolicy,
    node_svid_ttl: Duration,
    serving_svid_ttl: Duration,
}

impl Issuer {
    pub fn new(
        material: Arc<SigningMaterial>,
        ttl: TtlPolicy,
        node_svid_ttl: Duration,
        serving_svid_ttl: Duration,
    ) -> Self {
        Self {
            material,
            ttl,
            node_svid_ttl,
            serving_svid_ttl,
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
            ttl: self.ttl.x509_svid_ttl(entry.x509_svid_ttl),
        };
        self.material
            .ca
            .issue_for_verified_csr(csr, &request, now)
            .map_err(|e| IssueError::Signing(e.to_string()))
    }

    /// A JWT-SVID for `entry` with `audience`.
    pub fn jwt_svid(
        &self,
        entry: &Entry,
        audience: &[String],
        now: SystemTime,
    ) -> Result<IssuedToken, IssueError> {
        let expires_at = now + self.ttl.jwt_svid_ttl(entry.jwt_svid_ttl);
        let claims = JwtSvidClaims {
            spiffe_id: &entry.spiffe_id,
            audience,
            issued_at: now,
            expires_at,
            jti: None,
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
        let expires_at = now + self.ttl.wit_svid_ttl(entry.x509_svid_ttl);
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
            ttl: self.node_svid_ttl,
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
            ttl: self.serving_svid_ttl,
        };
        self.material
            .ca
            .issue_for_public_key(spki_der, &request, now)
            .map_err(|e| IssueError::Signing(e.to_string()))
    }
}
