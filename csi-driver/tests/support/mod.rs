//! A real issuer for one test pod: core's `Authority` signs real X.509-SVIDs, a real ES256 key
//! signs JWT-SVIDs and WIT-SVIDs. The pod's snapshot lives on a watch channel the test drives.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wimsey_core::bundle::TrustDomainBundle;
use wimsey_core::jose::jwk::{PublicJwk, private_jwk_json};
use wimsey_core::jose::jwt_svid::{JwtSvidClaims, mint_jwt_svid};
use wimsey_core::jose::key_id;
use wimsey_core::jose::wimse::{WitSvidClaims, mint_wit_svid};
use wimsey_core::keys::{KeyAlgorithm, SigningKey};
use wimsey_core::x509::{Authority, CaParams, SvidRequest};
use wimsey_core::{SpiffeId, TrustDomain};
use wimsey_csi::identity::{
    IdentitySnapshot, IdentitySource, IssuedIdentities, MintError, PodIdentity, PodInfo,
    WitSvidEntry, X509SvidEntry,
};
use wimsey_csi::socket::{DEFAULT_SOCKET_MODE, bind_unix_socket};
use wimsey_csi::workload_api::{ServeError, WorkloadApiLimits, serve_workload_api};
use zeroize::Zeroizing;

pub const TRUST_DOMAIN: &str = "example.org";
pub const FEDERATED_TRUST_DOMAIN: &str = "partner.example";
pub const WEB: &str = "spiffe://example.org/ns/default/sa/web";
pub const ADMIN: &str = "spiffe://example.org/ns/default/sa/admin";

/// The trust domain's signing material: CA, JWT key, WIT key.
pub struct Issuer {
    pub trust_domain: TrustDomain,
    pub ca: Authority,
    pub jwt_key: Arc<SigningKey>,
    pub jwt_kid: String,
    pub wit_key: SigningKey,
    pub wit_kid: String,
}

impl Issuer {
    pub fn new(trust_domain: &str) -> Self {
        let trust_domain = TrustDomain::new(trust_domain).expect("trust domain");
        let ca = Authority::generate_root(
            &trust_domain,
            KeyAlgorithm::EcdsaP256,
            &CaParams::new("wimsey test", Duration::from_secs(86400)),
            SystemTime::now(),
        )
        .expect("root CA");
        let jwt_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("jwt key");
        let wit_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("wit key");
        Self {
            jwt_kid: key_id(&jwt_key),
            wit_kid: key_id(&wit_key),
            trust_domain,
            ca,
            jwt_key: Arc::new(jwt_key),
            wit_key,
        }
    }

    pub fn bundle(&self) -> TrustDomainBundle {
        let mut bundle = TrustDomainBundle::new(self.trust_domain.clone());
        bundle.x509_authorities = self
            .ca
            .trust_bundle_roots()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        bundle.jwt_authorities.insert(
            self.jwt_kid.clone(),
            PublicJwk::for_signing_key(&self.jwt_key),
        );
        bundle.wit_authorities.insert(
            self.wit_kid.clone(),
            PublicJwk::for_signing_key(&self.wit_key),
        );
        bundle
    }

    /// A fresh key pair and X.509-SVID for `id`.
    pub fn x509_svid(&self, id: &str, hint: &str) -> X509SvidEntry {
        let spiffe_id = SpiffeId::parse(id).expect("id");
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let issued = self
            .ca
            .issue_for_public_key(
                &key.public_key_spki_der(),
                &SvidRequest {
                    spiffe_id: &spiffe_id,
                    dns_names: &[],
                    ttl: Duration::from_secs(3600),
                },
                SystemTime::now(),
            )
            .expect("issue");
        X509SvidEntry {
            spiffe_id,
            chain: issued.chain,
            private_key_pkcs8: key.pkcs8_der(),
            hint: hint.to_owned(),
        }
    }

    /// A fresh workload key and WIT-SVID for `id`.
    pub fn wit_svid(&self, id: &str) -> WitSvidEntry {
        let spiffe_id = SpiffeId::parse(id).expect("id");
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let now = SystemTime::now();
        let token = mint_wit_svid(
            &self.wit_key,
            &self.wit_kid,
            &WitSvidClaims {
                spiffe_id: &spiffe_id,
                workload_key: &PublicJwk::for_signing_key(&key),
                issued_at: now,
                expires_at: now + Duration::from_secs(3600),
                jti: None,
            },
        )
        .expect("mint WIT");
        WitSvidEntry {
            spiffe_id,
            token: Zeroizing::new(token),
            private_jwk: private_jwk_json(&key).expect("private JWK"),
            hint: String::new(),
        }
    }
}

/// Our trust domain plus one federated trust domain.
pub struct World {
    pub issuer: Issuer,
    pub partner: Issuer,
}

impl World {
    pub fn new() -> Self {
        Self {
            issuer: Issuer::new(TRUST_DOMAIN),
            partner: Issuer::new(FEDERATED_TRUST_DOMAIN),
        }
    }

    /// A snapshot for a pod holding `ids` (default first), with WIT-SVIDs for each.
    pub fn issued(&self, ids: &[(&str, &str)]) -> IdentitySnapshot {
        let partner = self.partner.bundle();
        IdentitySnapshot::Issued(IssuedIdentities {
            bundle: self.issuer.bundle(),
            federated_bundles: BTreeMap::from([(partner.trust_domain.clone(), partner)]),
            x509_svids: ids
                .iter()
                .map(|(id, hint)| self.issuer.x509_svid(id, hint))
                .collect(),
            wit_svids: Some(ids.iter().map(|(id, _)| self.issuer.wit_svid(id)).collect()),
        })
    }
}

/// Lifetime of the JWT-SVIDs a [`TestPod`] mints.
pub const JWT_SVID_TTL: Duration = Duration::from_secs(300);

/// The in-memory identity source of one pod.
pub struct TestPod {
    snapshots: watch::Sender<Arc<IdentitySnapshot>>,
    jwt_key: Arc<SigningKey>,
    jwt_kid: String,
    /// JWT-SVIDs minted so far (what a node API round trip would be).
    mints: AtomicUsize,
    /// Seconds to move a minted token's `iat` (and `exp`) into the past.
    jwt_backdate_secs: AtomicU64,
}

impl TestPod {
    pub fn new(issuer: &Issuer, initial: IdentitySnapshot) -> Self {
        Self {
            snapshots: watch::Sender::new(Arc::new(initial)),
            jwt_key: Arc::clone(&issuer.jwt_key),
            jwt_kid: issuer.jwt_kid.clone(),
            mints: AtomicUsize::new(0),
            jwt_backdate_secs: AtomicU64::new(0),
        }
    }

    pub fn publish(&self, snapshot: IdentitySnapshot) {
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// How many JWT-SVIDs this pod has minted.
    pub fn mints(&self) -> usize {
        self.mints.load(Ordering::SeqCst)
    }

    /// Mint tokens issued `by` ago (still valid, but possibly past their half-life).
    pub fn backdate_jwt_svids(&self, by: Duration) {
        self.jwt_backdate_secs.store(by.as_secs(), Ordering::SeqCst);
    }
}

impl PodIdentity for TestPod {
    fn current(&self) -> watch::Receiver<Arc<IdentitySnapshot>> {
        self.snapshots.subscribe()
    }

    async fn mint_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
    ) -> Result<Zeroizing<String>, MintError> {
        self.mints.fetch_add(1, Ordering::SeqCst);
        let issued_at =
            SystemTime::now() - Duration::from_secs(self.jwt_backdate_secs.load(Ordering::SeqCst));
        let claims = JwtSvidClaims {
            spiffe_id,
            audience,
            issued_at,
            expires_at: issued_at + JWT_SVID_TTL,
            jti: None,
            issuer: None,
        };
        mint_jwt_svid(&self.jwt_key, &self.jwt_kid, &claims)
            .map(Zeroizing::new)
            .map_err(|e| MintError::Failed(e.to_string()))
    }
}

/// A Workload API server for one pod on a real Unix socket in a temporary directory.
pub struct Server {
    pub pod: Arc<TestPod>,
    pub socket: PathBuf,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(pod: TestPod) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("socket");
        Self::start_at(pod, dir, socket).await
    }

    /// A server with `limits` instead of the defaults.
    pub async fn start_with_limits(pod: TestPod, limits: WorkloadApiLimits) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("socket");
        Self::start_with(pod, dir, socket, limits).await
    }

    pub async fn start_at(pod: TestPod, dir: tempfile::TempDir, socket: PathBuf) -> Self {
        Self::start_with(pod, dir, socket, WorkloadApiLimits::default()).await
    }

    /// The server the plugin runs for a pod (limits, reflection, the authority front).
    async fn start_with(
        pod: TestPod,
        dir: tempfile::TempDir,
        socket: PathBuf,
        limits: WorkloadApiLimits,
    ) -> Self {
        let pod = Arc::new(pod);
        let shutdown = CancellationToken::new();
        // Bound before the server task starts, so clients can connect at once.
        let listener = bind_unix_socket(&socket, DEFAULT_SOCKET_MODE).expect("bind");
        let task = tokio::spawn(serve_workload_api(
            listener,
            Arc::clone(&pod),
            limits,
            Default::default(),
            shutdown.clone(),
        ));
        Self {
            pod,
            socket,
            shutdown,
            task: Some(task),
            _dir: dir,
        }
    }

    /// `unix:///...`, as `SPIFFE_ENDPOINT_SOCKET` would carry it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Cancels and waits for the server to finish.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server stops within 10s")
            .expect("server task")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A plain tonic client of our generated stubs over the Unix socket: sends no headers unless told.
pub async fn raw_client(
    socket: &Path,
) -> wimsey_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    wimsey_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        unix_channel(socket).await,
    )
}

/// A gRPC channel to the Unix socket at `socket` (`:authority` localhost, as kubelet sends).
pub async fn unix_channel(socket: &Path) -> tonic::transport::Channel {
    let socket = socket.to_owned();
    tonic::transport::Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect")
}

/// A request carrying the security header.
pub fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("value"));
    request
}

/// A pod handle of the test source (shared, so the test can rotate it).
#[derive(Clone)]
pub struct SharedPod(pub Arc<TestPod>);

impl PodIdentity for SharedPod {
    fn current(&self) -> watch::Receiver<Arc<IdentitySnapshot>> {
        self.0.current()
    }

    async fn mint_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
    ) -> Result<Zeroizing<String>, MintError> {
        self.0.mint_jwt_svid(spiffe_id, audience).await
    }
}

/// Issues `spiffe://example.org/ns/<ns>/sa/<sa>` to every attached pod, from a real CA.
pub struct TestSource {
    pub world: Arc<World>,
    /// Issue on a spawned task, as the node API client does, instead of inside `attach`.
    background: bool,
    pub pods: Mutex<HashMap<String, Arc<TestPod>>>,
    /// The token of every attach, in order.
    pub tokens: Mutex<Vec<Option<String>>>,
    /// Every detached pod UID, in order.
    pub detached: Mutex<Vec<String>>,
}

impl TestSource {
    /// Issues inside `attach`: a pod's identities are there once its volume is published.
    pub fn new() -> Arc<Self> {
        Self::build(false)
    }

    /// Like the node API client: `attach` returns at once with the pod `NotReady`, and a spawned
    /// task issues its identities (key generation and signing stay off NodePublishVolume's path).
    /// Must be attached within a Tokio runtime.
    pub fn issuing_in_background() -> Arc<Self> {
        Self::build(true)
    }

    fn build(background: bool) -> Arc<Self> {
        Arc::new(Self {
            world: Arc::new(World::new()),
            background,
            pods: Mutex::new(HashMap::new()),
            tokens: Mutex::new(Vec::new()),
            detached: Mutex::new(Vec::new()),
        })
    }

    pub fn pod(&self, uid: &str) -> Arc<TestPod> {
        Arc::clone(
            self.pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(uid)
                .expect("attached"),
        )
    }

    pub fn rotate(&self, uid: &str, id: &str) {
        self.pod(uid).publish(self.world.issued(&[(id, "")]));
    }
}

impl IdentitySource for TestSource {
    type Pod = SharedPod;

    fn attach(&self, pod: PodInfo) -> SharedPod {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pod.token.as_ref().map(|t| t.to_string()));
        let id = format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            pod.namespace, pod.service_account
        );
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let handle = pods.entry(pod.uid.clone()).or_insert_with(|| {
            if self.background {
                let pod = Arc::new(TestPod::new(&self.world.issuer, IdentitySnapshot::NotReady));
                let (world, issuing) = (Arc::clone(&self.world), Arc::clone(&pod));
                tokio::spawn(async move { issuing.publish(world.issued(&[(id.as_str(), "")])) });
                pod
            } else {
                Arc::new(TestPod::new(
                    &self.world.issuer,
                    self.world.issued(&[(id.as_str(), "")]),
                ))
            }
        });
        SharedPod(Arc::clone(handle))
    }

    fn detach(&self, pod_uid: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod_uid);
        self.detached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pod_uid.to_owned());
    }
}
