//! The trust domain's signing authority (embedded backend).
//!
//! The CA keys and the JWT/WIT signing keys live in one Secret (`wimsey-authority` in the
//! operator's namespace), as a JSON document ([`state::StoredAuthority`]). The first replica to
//! start creates it with `create`, so of two replicas starting together one wins and the other
//! gets AlreadyExists and loads the winner's keys. Every replica watches the Secret and signs
//! with what it holds. Rotation ([`state::rotate`], driven by `core::rotation`) is written back
//! with a resourceVersion-guarded replace, so two replicas rotating at once cannot both win: the
//! loser reloads. The bundle (X.509 roots, JWT and WIT keys) is also published as the ConfigMap
//! `wimsey-bundle` (`bundle.pem`, `bundle.spiffe`) for consumers that do not speak SPIFFE.
//!
//! Everything signed with this material (X.509-, JWT- and WIT-SVIDs, node SVIDs, the serving
//! SVID) is signed by [`issuer::Issuer`], with lifetimes from `wimsey_core::issuance`.

pub mod issuer;
mod secret;
pub mod serving;
pub mod state;
pub mod store;
pub mod upstream;

use std::time::Duration;

use wimsey_core::bundle::BundleError;
use wimsey_core::keys::KeyError;
use wimsey_core::oidc::IssuerUrl;
use wimsey_core::rotation::RotationError;
use wimsey_core::x509::X509Error;
use wimsey_core::x509::upstream::UpstreamCaError;

use crate::owner::Owner;

pub use secret::{
    REASON_REPLACED, REASON_RESTORED, REASON_UNREADABLE, REASON_UPSTREAM_UNUSABLE, SigningAuthority,
};
pub use state::{KeyKind, Lifetimes, SigningMaterial, StoredAuthority, TokenKey};

/// The Secret key holding the authority's JSON state.
pub const SECRET_DATA_KEY: &str = "authority.json";
/// ConfigMap keys: the X.509 roots as PEM, and the SPIFFE bundle (JWKS with refresh hint).
pub const BUNDLE_PEM_KEY: &str = "bundle.pem";
pub const BUNDLE_SPIFFE_KEY: &str = "bundle.spiffe";
/// Annotation on the bundle ConfigMap: the authority generation it was rendered from, so an
/// older replica never overwrites a newer bundle.
pub const GENERATION_ANNOTATION: &str = "wimsey.dev/authority-generation";

pub fn parse_duration(value: &str) -> Result<Duration, String> {
    wimsey_core::entries::parse_go_duration(value).map_err(|reason| format!("{value:?}: {reason}"))
}

/// Authority settings, flattened into `wimsey-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthorityArgs {
    /// Namespace of the authority Secret and the bundle ConfigMap: the operator's own, which
    /// `run` takes from its `--namespace`.
    #[arg(skip)]
    pub authority_namespace: String,
    /// Secret holding the CA and JWT/WIT signing keys.
    #[arg(
        long,
        env = "WIMSEY_AUTHORITY_SECRET",
        default_value = "wimsey-authority"
    )]
    pub authority_secret: String,
    /// ConfigMap the trust bundle is published to.
    #[arg(long, env = "WIMSEY_BUNDLE_CONFIGMAP", default_value = "wimsey-bundle")]
    pub bundle_configmap: String,
    /// The bundle ConfigMap's owner (the operator's Deployment, once looked up; see
    /// [`crate::owner`]).
    #[arg(skip)]
    pub bundle_owner: Option<Owner>,
    /// Lifetime of a CA certificate; a CA key signs for the first half of it.
    #[arg(long, env = "WIMSEY_CA_TTL", default_value = "24h", value_parser = parse_duration)]
    pub ca_ttl: Duration,
    /// How long a JWT (and WIT) signing key signs before its successor takes over.
    #[arg(long, env = "WIMSEY_JWT_KEY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub jwt_key_ttl: Duration,
    /// How long a new key is in the bundle before it signs.
    #[arg(long, env = "WIMSEY_KEY_PROPAGATION_DELAY", default_value = "1h", value_parser = parse_duration)]
    pub key_propagation_delay: Duration,
    /// Cap on X.509-SVID and WIT-SVID lifetimes (entries asking for more get this).
    #[arg(long, env = "WIMSEY_MAX_X509_SVID_TTL", default_value = "12h", value_parser = parse_duration)]
    pub max_x509_svid_ttl: Duration,
    /// Cap on JWT-SVID lifetimes.
    #[arg(long, env = "WIMSEY_MAX_JWT_SVID_TTL", default_value = "1h", value_parser = parse_duration)]
    pub max_jwt_svid_ttl: Duration,
    /// Lifetime of node SVIDs issued by Attest; plugins re-attest before it ends.
    #[arg(long, env = "WIMSEY_NODE_SVID_TTL", default_value = "1h", value_parser = parse_duration)]
    pub node_svid_ttl: Duration,
    /// Lifetime of the operator's own serving X.509-SVID (renewed at half-life).
    #[arg(long, env = "WIMSEY_SERVER_SVID_TTL", default_value = "1h", value_parser = parse_duration)]
    pub server_svid_ttl: Duration,
    /// OIDC issuer of JWT-SVIDs (an https URL, written exactly as relying parties register it):
    /// JWT-SVIDs carry it as `iss`, and the bundle endpoint serves OIDC discovery for it.
    /// Unset: no `iss` and no discovery.
    #[arg(long, env = "WIMSEY_JWT_ISSUER_URL", value_parser = IssuerUrl::parse)]
    pub jwt_issuer_url: Option<IssuerUrl>,
    /// Secret (in the operator's namespace, cert-manager's `kubernetes.io/tls` layout with
    /// `ca.crt`) holding an upstream CA: X.509-SVIDs are then signed by it and the bundle
    /// carries its `ca.crt` roots. Unset: the authority's own self-signed root.
    #[arg(long, env = "WIMSEY_UPSTREAM_CA_SECRET")]
    pub upstream_ca_secret: Option<String>,
}

impl AuthorityArgs {
    pub fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            ca_ttl: self.ca_ttl,
            jwt_key_ttl: self.jwt_key_ttl,
            propagation_delay: self.key_propagation_delay,
            max_x509_svid_ttl: self.max_x509_svid_ttl,
            max_jwt_svid_ttl: self.max_jwt_svid_ttl,
            node_svid_ttl: self.node_svid_ttl,
            server_svid_ttl: self.server_svid_ttl,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the authority Secret has no {0:?} key")]
    MissingData(&'static str),
    #[error("the authority Secret's {SECRET_DATA_KEY:?} is not an authority document: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "the authority Secret's {SECRET_DATA_KEY:?} has an unusable {set} key {id:?}: {problem}"
    )]
    BadKey {
        set: &'static str,
        id: String,
        problem: String,
    },
    #[error("the authority Secret's {SECRET_DATA_KEY:?} holds an invalid {0}")]
    Corrupt(&'static str),
    #[error("the authority Secret is for trust domain {stored:?}, configured is {configured:?}")]
    TrustDomainMismatch { stored: String, configured: String },
    #[error("no active {0} key")]
    NoActiveKey(&'static str),
    #[error("the authority Secret kept changing while starting ({0} attempts)")]
    Contended(u32),
    #[error("invalid authority settings: {0}")]
    Settings(&'static str),
    #[error("{0}")]
    X509(#[from] X509Error),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("{0}")]
    Rotation(#[from] RotationError),
    #[error("{0}")]
    Bundle(#[from] BundleError),
    #[error("upstream CA Secret {secret:?}: {error}")]
    Upstream {
        secret: String,
        error: UpstreamCaError,
    },
    #[error("upstream CA Secret {0:?} does not exist")]
    UpstreamMissing(String),
}

impl AuthorityError {
    /// Whether trying again later can succeed: the API server was unreachable or refused us
    /// (down, RBAC not applied yet), or other replicas kept changing the Secret. A Secret whose
    /// contents cannot be used, or bad settings, stay wrong until someone fixes them.
    pub fn is_retryable(&self) -> bool {
        // The upstream CA Secret may be created, renewed or fixed at any time (cert-manager
        // issues it asynchronously), so starting waits for it.
        matches!(
            self,
            AuthorityError::Kube(_)
                | AuthorityError::Contended(_)
                | AuthorityError::Upstream { .. }
                | AuthorityError::UpstreamMissing(_)
        )
    }

    pub fn label(&self) -> &'static str {
        match self {
            AuthorityError::Kube(_) => "kube",
            AuthorityError::MissingData(_) => "missing_data",
            AuthorityError::Json(_) => "json",
            AuthorityError::Corrupt(_) => "corrupt",
            AuthorityError::BadKey { .. } => "bad_key",
            AuthorityError::TrustDomainMismatch { .. } => "trust_domain_mismatch",
            AuthorityError::NoActiveKey(_) => "no_active_key",
            AuthorityError::Contended(_) => "contended",
            AuthorityError::Settings(_) => "settings",
            AuthorityError::X509(_) => "x509",
            AuthorityError::Key(_) => "key",
            AuthorityError::Rotation(_) => "rotation",
            AuthorityError::Bundle(_) => "bundle",
            AuthorityError::Upstream { error, .. } => error.label(),
            AuthorityError::UpstreamMissing(_) => "missing",
        }
    }
}

/// Authority settings and material for unit tests, from the flags' defaults.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;
    use std::time::SystemTime;

    use clap::Parser;
    use wimsey_core::TrustDomain;

    use super::state::rotate;
    use super::{AuthorityArgs, SigningMaterial, StoredAuthority};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        authority: AuthorityArgs,
    }

    /// `args` parsed as `wimsey-operator run` flags.
    pub(crate) fn parse_args(args: &[&str]) -> Result<AuthorityArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.authority)
    }

    /// The defaults: 24h CA, 24h JWT keys, 1h propagation, 12h X.509-SVIDs.
    pub(crate) fn default_args() -> AuthorityArgs {
        parse_args(&[]).expect("the defaults parse")
    }

    /// Fresh material of `td`: keys made now, with the default lifetimes.
    pub(crate) fn fresh_material(td: &TrustDomain) -> Arc<SigningMaterial> {
        let lifetimes = default_args().lifetimes();
        let now = SystemTime::now();
        let mut stored = StoredAuthority::empty(td);
        rotate(&mut stored, td, &lifetimes, now).expect("rotate");
        Arc::new(SigningMaterial::from_stored(&stored, td, &lifetimes, now).expect("material"))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::parse_args;
    use super::*;

    #[test]
    fn flags_parse_go_durations_and_default() {
        let args = parse_args(&["--ca-ttl", "2h", "--node-svid-ttl", "90s"]).unwrap();
        assert_eq!(args.ca_ttl, Duration::from_secs(7200));
        assert_eq!(args.node_svid_ttl, Duration::from_secs(90));
        assert_eq!(args.authority_secret, "wimsey-authority");
        assert!(parse_args(&["--ca-ttl", "soon"]).is_err());
    }

    #[test]
    fn the_jwt_issuer_url_is_optional_and_validated() {
        let unset = parse_args(&[]).unwrap();
        assert_eq!(unset.jwt_issuer_url, None);
        let set = parse_args(&["--jwt-issuer-url", "https://oidc.example.org"]).unwrap();
        assert_eq!(
            set.jwt_issuer_url.as_ref().map(IssuerUrl::as_str),
            Some("https://oidc.example.org")
        );
        for bad in [
            "http://oidc.example.org",
            "https://oidc.example.org/?x=1",
            "oidc",
        ] {
            let error = parse_args(&["--jwt-issuer-url", bad]).unwrap_err();
            assert!(error.to_string().contains("issuer URL"), "{bad}: {error}");
        }
    }
}
