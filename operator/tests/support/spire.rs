//! A real SPIRE Server (v1.13.3) as a local process, for interop tests (`make test-spire-interop`).
//!
//! Include it with `#[path = "support/spire.rs"] mod spire;`. The binary comes from
//! `WIMSEY_SPIRE_SERVER` (set by `make test-spire-interop`). Everything is blocking (std
//! processes): in a `#[tokio::test]` whose runtime also serves something SPIRE fetches (a bundle
//! endpoint), run it on `flavor = "multi_thread"` or wrap calls in `spawn_blocking`, or the
//! served endpoint cannot answer while a call waits.
//!
//! ```text
//! SpireOptions::new(trust_domain: &str) -> SpireOptions      // defaults below; fields are pub
//!     .refresh_hint: Duration             // bundle endpoint `refresh_hint` (default 5 s)
//!     .bundle_endpoint_port: Option<u16>  // None: a free port on 127.0.0.1
//!     .bundle_endpoint_profile: EndpointProfile  // HttpsSpiffe (default) | HttpsWeb { cert_file, key_file }
//!     .ca_ttl: Duration                   // default 24 h (SPIRE prepares the next CA at 1/2, activates at 5/6)
//!     .ca_key_type: &'static str          // "ec-p256" (default) | "ec-p384" | "rsa-2048" | "rsa-4096"
//!     .default_x509_svid_ttl: Duration    // default 1 h
//!     .key_manager: KeyManager            // Memory (default) | Disk (keys.json in the data dir)
//!     .federates_with: Vec<FederatesWith> // FederatesWith::https_spiffe(td, url, endpoint_id) | ::https_web(td, url)
//!     .env: Vec<(String, String)>         // extra env for the server, e.g. SSL_CERT_FILE for https_web peers
//!     .extra_plugins: String              // more plugin blocks (HCL) in `plugins {}`, e.g. NodeAttestor "k8s_psat"
//!     .startup_timeout: Duration          // default 60 s
//!     .command_timeout: Duration          // per CLI call, default 30 s
//! SpireServer::start(opts) -> anyhow::Result<SpireServer>    // waits for healthcheck + bundle endpoint TCP
//! spire_server_binary() -> anyhow::Result<PathBuf>             // WIMSEY_SPIRE_SERVER, or an error naming the make target
//! free_port() -> anyhow::Result<u16>
//! server.trust_domain() -> &str                // "spire.test"
//! server.server_id() -> String                 // "spiffe://spire.test/spire/server": the endpoint SPIFFE ID (https_spiffe)
//! server.bundle_endpoint_addr() -> SocketAddr
//! server.server_port() -> u16                  // the agent API (SPIRE's `bind_port`) on 127.0.0.1
//! server.bundle_endpoint_url() -> String       // "https://127.0.0.1:<port>" (SPIRE serves the bundle on every path)
//! server.socket_path() / dir() / log_path() / config_path() -> &Path
//! server.config() -> &str                      // the HCL it runs with
//! server.log_tail(lines) -> String             // also printed by Drop when the test panics
//! server.pid() -> u32
//! server.cli(args, stdin) -> anyhow::Result<String>    // `spire-server <args> -socketPath <sock>`, stdout
//! server.healthcheck() -> anyhow::Result<()>
//! server.bundle_show_spiffe() -> anyhow::Result<String>           // own bundle, SPIFFE JWKS (pretty JSON)
//! server.bundle() -> anyhow::Result<TrustDomainBundle>            // the same, parsed
//! server.x509_authorities_der() -> anyhow::Result<Vec<Vec<u8>>>   // its X.509 authorities, DER
//! server.bundle_list_spiffe_raw() -> anyhow::Result<String>       // `bundle list -format spiffe` stdout
//! server.bundle_list_spiffe() -> anyhow::Result<Vec<(String, String)>>   // (trust domain name, JWKS JSON)
//! server.federated_bundle(td) -> anyhow::Result<Option<TrustDomainBundle>>  // td: "x.test" or "spiffe://x.test"
//! server.bundle_set_spiffe(td, json) -> anyhow::Result<()>        // `bundle set -format spiffe -id spiffe://<td>`
//! server.bundle_delete(td) -> anyhow::Result<()>
//! server.federation_create(&FederatesWith, bootstrap: Option<&str>) -> anyhow::Result<()>  // a datastore relationship, polled at once
//! server.federation_refresh(td) -> anyhow::Result<()>             // fetch a peer now (does not reschedule polling)
//! server.x509_mint(spiffe_id, ttl) -> anyhow::Result<(String, String, String)>  // (chain PEM, PKCS#8 key PEM, bundle PEM)
//! server.jwt_mint(spiffe_id, audience, ttl) -> anyhow::Result<String>  // a JWT-SVID (compact JWS) signed by SPIRE's JWT key
//! server.x509_authority_state() -> anyhow::Result<X509AuthorityState>  // active / prepared / old authority IDs
//! server.prepare_x509_authority() -> anyhow::Result<String>       // `localauthority x509 prepare`: new authority ID
//! server.activate_x509_authority(id) -> anyhow::Result<()>
//! server.rotate_x509_ca() -> anyhow::Result<String>               // prepare + activate, the new authority ID
//! server.taint_x509_authority(id) / revoke_x509_authority(id) -> anyhow::Result<()>   // only the "old" one
//! server.wait_for(what, timeout, poll) -> anyhow::Result<T>       // poll a closure returning Ok(Some(T))
//! parse_bundle_list(stdout) -> anyhow::Result<Vec<(String, String)>>
//! WebPki::generate(dir, &["127.0.0.1", "localhost"]) -> anyhow::Result<WebPki>  // openssl: CA + serving cert
//!     .ca_pem / .cert_pem / .key_pem: PathBuf   // for https_web: serve cert/key, SSL_CERT_FILE=ca_pem for the client
//! ```
//!
//! SPIRE facts these tests rely on (v1.13.3 source): a `refresh_hint` below 1 m is accepted (a
//! warning is logged) and published as is, but SPIRE's own federation client never polls more often
//! than every 15 s (`max(hint, 1 m) / 4`); a peer is first fetched when the server starts, and an
//! https_spiffe peer whose bundle SPIRE does not hold yet is retried only after 1 m. Either set its
//! bundle with `bundle_set_spiffe` and call `federation_refresh` (fetches now, but the poll loop
//! still waits out that 1 m), or add the peer with `federation_create(peer, Some(bootstrap))`:
//! polled at once, then every 15 s. SPIRE's bundle endpoint answers on every path and publishes
//! `spiffe_refresh_hint` (`bundle show` does not). The SQL datastore needs a cgo build (sqlite3);
//! `build.sh spire` builds with `CGO_ENABLED=1`.

#![allow(dead_code, unreachable_pub)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use wimsey_core::TrustDomain;
use wimsey_core::bundle::TrustDomainBundle;

/// The environment variable naming the spire-server binary.
pub const SPIRE_SERVER_ENV: &str = "WIMSEY_SPIRE_SERVER";

/// How SPIRE's own bundle endpoint authenticates itself.
#[derive(Debug, Clone)]
pub enum EndpointProfile {
    /// Its X509-SVID `spiffe://<td>/spire/server` (SPIRE's default).
    HttpsSpiffe,
    /// A certificate and key from disk (`serving_cert_file`), for https_web clients.
    HttpsWeb {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// The profile SPIRE uses to fetch a federated trust domain's bundle.
#[derive(Debug, Clone)]
pub enum FederationProfile {
    HttpsSpiffe {
        endpoint_spiffe_id: String,
    },
    /// Validated against the system roots (Go honours `SSL_CERT_FILE`; see [`SpireOptions::env`]).
    HttpsWeb,
}

/// One `federates_with "<td>"` block.
#[derive(Debug, Clone)]
pub struct FederatesWith {
    pub trust_domain: String,
    pub bundle_endpoint_url: String,
    pub profile: FederationProfile,
}

impl FederatesWith {
    pub fn https_spiffe(trust_domain: &str, url: &str, endpoint_spiffe_id: &str) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            bundle_endpoint_url: url.into(),
            profile: FederationProfile::HttpsSpiffe {
                endpoint_spiffe_id: endpoint_spiffe_id.into(),
            },
        }
    }

    pub fn https_web(trust_domain: &str, url: &str) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            bundle_endpoint_url: url.into(),
            profile: FederationProfile::HttpsWeb,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyManager {
    /// Keys in memory: gone when the process ends.
    Memory,
    /// Keys in `<data dir>/keys.json`.
    Disk,
}

#[derive(Debug, Clone)]
pub struct SpireOptions {
    pub trust_domain: String,
    pub refresh_hint: Duration,
    pub bundle_endpoint_port: Option<u16>,
    pub bundle_endpoint_profile: EndpointProfile,
    pub ca_ttl: Duration,
    pub ca_key_type: &'static str,
    pub default_x509_svid_ttl: Duration,
    pub key_manager: KeyManager,
    pub federates_with: Vec<FederatesWith>,
    pub env: Vec<(String, String)>,
    /// Plugin blocks (HCL) added inside `plugins { }` after the datastore and key manager.
    pub extra_plugins: String,
    pub startup_timeout: Duration,
    pub command_timeout: Duration,
}

impl SpireOptions {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            refresh_hint: Duration::from_secs(5),
            bundle_endpoint_port: None,
            bundle_endpoint_profile: EndpointProfile::HttpsSpiffe,
            ca_ttl: Duration::from_secs(24 * 3600),
            ca_key_type: "ec-p256",
            default_x509_svid_ttl: Duration::from_secs(3600),
            key_manager: KeyManager::Memory,
            federates_with: Vec::new(),
            env: Vec::new(),
            extra_plugins: String::new(),
            startup_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// The authority IDs `localauthority x509 show` reports (the CA certificates' subject key IDs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct X509AuthorityState {
    pub active: Option<String>,
    pub prepared: Option<String>,
    pub old: Option<String>,
}

/// A running spire-server; killed (by PID) and reaped on drop, its directory removed.
#[derive(Debug)]
pub struct SpireServer {
    child: Child,
    binary: PathBuf,
    trust_domain: String,
    bundle_endpoint: SocketAddr,
    server_port: u16,
    socket: PathBuf,
    log: PathBuf,
    config_path: PathBuf,
    config: String,
    command_timeout: Duration,
    env: Vec<(String, String)>,
    startup_timeout: Duration,
    // Last: removed after the process is gone.
    dir: tempfile::TempDir,
}

/// `spire-server run -config <config>` in `dir`, appending to `log`.
fn spawn(
    binary: &Path,
    config: &Path,
    dir: &Path,
    log: &Path,
    env: &[(String, String)],
) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new(binary);
    cmd.arg("run")
        .arg("-config")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// The spire-server binary from `WIMSEY_SPIRE_SERVER`.
pub fn spire_server_binary() -> anyhow::Result<PathBuf> {
    let Some(path) = std::env::var_os(SPIRE_SERVER_ENV) else {
        bail!(
            "{SPIRE_SERVER_ENV} is not set: these tests run a real SPIRE Server; run them with \
             `make test-spire-interop` (it builds spire-server into the cache and sets {SPIRE_SERVER_ENV})"
        );
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!(
            "{SPIRE_SERVER_ENV}={} is not a file; `make test-spire-interop` builds it",
            path.display()
        );
    }
    Ok(path)
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A Go duration literal.
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

/// An HCL string literal.
fn hcl(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn trust_domain_id(td: &str) -> String {
    if td.starts_with("spiffe://") {
        td.to_string()
    } else {
        format!("spiffe://{td}")
    }
}

fn trust_domain_name(td: &str) -> &str {
    td.strip_prefix("spiffe://").unwrap_or(td)
}

struct ConfigInput<'a> {
    opts: &'a SpireOptions,
    dir: &'a Path,
    server_port: u16,
    bundle_port: u16,
    socket: &'a Path,
}

fn render_config(input: &ConfigInput<'_>) -> String {
    let o = input.opts;
    let data = input.dir.join("data");
    let mut c = String::new();
    let _ = writeln!(c, "server {{");
    let _ = writeln!(c, "    bind_address = \"127.0.0.1\"");
    let _ = writeln!(c, "    bind_port = \"{}\"", input.server_port);
    let _ = writeln!(
        c,
        "    socket_path = {}",
        hcl(&input.socket.to_string_lossy())
    );
    let _ = writeln!(c, "    trust_domain = {}", hcl(&o.trust_domain));
    let _ = writeln!(c, "    data_dir = {}", hcl(&data.to_string_lossy()));
    let _ = writeln!(c, "    log_level = \"DEBUG\"");
    let _ = writeln!(c, "    ca_ttl = \"{}\"", go_duration(o.ca_ttl));
    let _ = writeln!(c, "    ca_key_type = {}", hcl(o.ca_key_type));
    let _ = writeln!(
        c,
        "    default_x509_svid_ttl = \"{}\"",
        go_duration(o.default_x509_svid_ttl)
    );
    let _ = writeln!(c, "    federation {{");
    let _ = writeln!(c, "        bundle_endpoint {{");
    let _ = writeln!(c, "            address = \"127.0.0.1\"");
    let _ = writeln!(c, "            port = {}", input.bundle_port);
    let _ = writeln!(
        c,
        "            refresh_hint = \"{}\"",
        go_duration(o.refresh_hint)
    );
    match &o.bundle_endpoint_profile {
        EndpointProfile::HttpsSpiffe => {
            let _ = writeln!(c, "            profile \"https_spiffe\" {{}}");
        }
        EndpointProfile::HttpsWeb {
            cert_file,
            key_file,
        } => {
            let _ = writeln!(c, "            profile \"https_web\" {{");
            let _ = writeln!(c, "                serving_cert_file {{");
            let _ = writeln!(
                c,
                "                    cert_file_path = {}",
                hcl(&cert_file.to_string_lossy())
            );
            let _ = writeln!(
                c,
                "                    key_file_path = {}",
                hcl(&key_file.to_string_lossy())
            );
            let _ = writeln!(c, "                    file_sync_interval = \"1s\"");
            let _ = writeln!(c, "                }}");
            let _ = writeln!(c, "            }}");
        }
    }
    let _ = writeln!(c, "        }}");
    for peer in &o.federates_with {
        let _ = writeln!(c, "        federates_with {} {{", hcl(&peer.trust_domain));
        let _ = writeln!(
            c,
            "            bundle_endpoint_url = {}",
            hcl(&peer.bundle_endpoint_url)
        );
        match &peer.profile {
            FederationProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                let _ = writeln!(c, "            bundle_endpoint_profile \"https_spiffe\" {{");
                let _ = writeln!(
                    c,
                    "                endpoint_spiffe_id = {}",
                    hcl(endpoint_spiffe_id)
                );
                let _ = writeln!(c, "            }}");
            }
            FederationProfile::HttpsWeb => {
                let _ = writeln!(c, "            bundle_endpoint_profile \"https_web\" {{}}");
            }
        }
        let _ = writeln!(c, "        }}");
    }
    let _ = writeln!(c, "    }}");
    let _ = writeln!(c, "}}");
    let _ = writeln!(c);
    let _ = writeln!(c, "plugins {{");
    let _ = writeln!(c, "    DataStore \"sql\" {{");
    let _ = writeln!(c, "        plugin_data {{");
    let _ = writeln!(c, "            database_type = \"sqlite3\"");
    let _ = writeln!(
        c,
        "            connection_string = {}",
        hcl(&data.join("datastore.sqlite3").to_string_lossy())
    );
    let _ = writeln!(c, "        }}");
    let _ = writeln!(c, "    }}");
    match o.key_manager {
        KeyManager::Memory => {
            let _ = writeln!(c, "    KeyManager \"memory\" {{");
            let _ = writeln!(c, "        plugin_data {{}}");
            let _ = writeln!(c, "    }}");
        }
        KeyManager::Disk => {
            let _ = writeln!(c, "    KeyManager \"disk\" {{");
            let _ = writeln!(c, "        plugin_data {{");
            let _ = writeln!(
                c,
                "            keys_path = {}",
                hcl(&data.join("keys.json").to_string_lossy())
            );
            let _ = writeln!(c, "        }}");
            let _ = writeln!(c, "    }}");
        }
    }
    c.push_str(&o.extra_plugins);
    if !o.extra_plugins.is_empty() && !o.extra_plugins.ends_with('\n') {
        c.push('\n');
    }
    let _ = writeln!(c, "}}");
    c
}

/// What a finished command printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with `stdin`, killing it (by its PID, via its handle) after `timeout`.
fn run_with_timeout(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Output> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            // Dropping the pipe at the end closes the command's stdin.
            Some(std::thread::spawn(move || pipe.write_all(&data)))
        }
        _ => None,
    };
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "{what}: no exit after {timeout:?} (killed)\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
}

/// Parses `spire-server bundle list -format spiffe`: for each federated trust domain a header
///
/// ```text
/// ****************************************
/// * <trust domain name>
/// ****************************************
/// ```
///
/// then the bundle as indented JSON, and a blank line between blocks. No bundles: no output.
pub fn parse_bundle_list(stdout: &str) -> anyhow::Result<Vec<(String, String)>> {
    let is_rule = |line: &str| line.len() >= 3 && line.bytes().all(|b| b == b'*');
    let lines: Vec<&str> = stdout.lines().collect();
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let header = is_rule(line)
            && i + 2 < lines.len()
            && lines[i + 1].starts_with("* ")
            && is_rule(lines[i + 2]);
        if header {
            let name = lines[i + 1][2..].trim().to_string();
            blocks.push((name, String::new()));
            i += 3;
            continue;
        }
        match blocks.last_mut() {
            Some((_, json)) => {
                json.push_str(line);
                json.push('\n');
            }
            None if line.trim().is_empty() => {}
            None => bail!("bundle list output does not start with a header: {line:?}"),
        }
        i += 1;
    }
    for (name, json) in &mut blocks {
        let trimmed = json.trim().to_string();
        serde_json::from_str::<serde_json::Value>(&trimmed)
            .with_context(|| format!("bundle list: the bundle of {name} is not JSON"))?;
        *json = trimmed;
    }
    Ok(blocks)
}

/// A throwaway web PKI from the openssl CLI: a CA and one serving certificate (EC P-256, 1 day)
/// whose SANs are `names` (IP addresses become IP SANs), for https_web bundle endpoints.
#[derive(Debug, Clone)]
pub struct WebPki {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl WebPki {
    pub fn generate(dir: &Path, names: &[&str]) -> anyhow::Result<Self> {
        let sans: Vec<String> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        let p = |path: &Path| path.to_string_lossy().into_owned();
        let ext = p(&dir.join("web-server.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n",
                sans.join(",")
            ),
        )?;
        let pki = Self {
            ca_pem: dir.join("web-ca.pem"),
            cert_pem: dir.join("web-server.pem"),
            key_pem: dir.join("web-server.key"),
        };
        let (ca_key, csr) = (p(&dir.join("web-ca.key")), p(&dir.join("web-server.csr")));
        let (ca_pem, cert_pem, key_pem) = (p(&pki.ca_pem), p(&pki.cert_pem), p(&pki.key_pem));
        let subject = format!("/CN={}", names.first().copied().unwrap_or("localhost"));
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let steps: [Vec<&str>; 3] = [
            [
                &["req", "-x509"][..],
                &ec[..],
                &[
                    "-keyout",
                    &ca_key,
                    "-out",
                    &ca_pem,
                    "-subj",
                    "/CN=wimsey test web CA",
                ],
                &["-days", "1", "-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ]
            .concat(),
            [
                &["req"][..],
                &ec[..],
                &["-keyout", &key_pem, "-out", &csr, "-subj", &subject],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert_pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        ];
        for args in steps {
            let mut cmd = Command::new("openssl");
            cmd.args(&args);
            let what = format!("openssl {}", args.join(" "));
            let out = run_with_timeout(cmd, None, Duration::from_secs(30), &what)?;
            if !out.status.success() {
                bail!("{what}: {}\nstderr:\n{}", out.status, out.stderr);
            }
        }
        Ok(pki)
    }
}

/// Numbers the files the harness writes (minted SVIDs, bootstrap bundles).
static SEQ: AtomicU64 = AtomicU64::new(0);

impl SpireServer {
    /// Writes the config into a fresh temporary directory, starts `spire-server run` and waits
    /// until its healthcheck passes and its bundle endpoint accepts TCP connections.
    pub fn start(opts: SpireOptions) -> anyhow::Result<Self> {
        let binary = spire_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("wimsey-spire-")
            .tempdir()
            .context("creating the SPIRE directory")?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        // Unix socket paths are limited to 108 bytes; the temp dir keeps this one short.
        let socket = dir.path().join("api.sock");
        // Both listeners are held until both ports are known, so the two differ.
        let server_listener = TcpListener::bind("127.0.0.1:0")?;
        let bundle_listener = TcpListener::bind("127.0.0.1:0")?;
        let server_port = server_listener.local_addr()?.port();
        let bundle_port = opts
            .bundle_endpoint_port
            .unwrap_or(bundle_listener.local_addr()?.port());
        drop((server_listener, bundle_listener));
        let config = render_config(&ConfigInput {
            opts: &opts,
            dir: dir.path(),
            server_port,
            bundle_port,
            socket: &socket,
        });
        let config_path = dir.path().join("server.conf");
        std::fs::write(&config_path, &config)?;
        let log = dir.path().join("spire-server.log");
        let child = spawn(&binary, &config_path, dir.path(), &log, &opts.env)?;
        let mut server = Self {
            child,
            binary,
            trust_domain: opts.trust_domain.clone(),
            bundle_endpoint: SocketAddr::from(([127, 0, 0, 1], bundle_port)),
            server_port,
            socket,
            log,
            config_path,
            config,
            command_timeout: opts.command_timeout,
            env: opts.env.clone(),
            startup_timeout: opts.startup_timeout,
            dir,
        };
        server.wait_ready(opts.startup_timeout)?;
        Ok(server)
    }

    /// Stops the server (by PID) and reaps it; its socket stops answering.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts a stopped server again on the same configuration and datastore (the log goes on).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.child = spawn(
            &self.binary,
            &self.config_path,
            self.dir.path(),
            &self.log,
            &self.env,
        )?;
        self.wait_ready(self.startup_timeout)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last_error = String::from("not polled yet");
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "spire-server exited during startup ({status})\nconfig:\n{}\nlog tail:\n{}",
                    self.config,
                    self.log_tail(40)
                );
            }
            let ready = self.healthcheck().and_then(|()| {
                TcpStream::connect_timeout(&self.bundle_endpoint, Duration::from_secs(1))
                    .map(drop)
                    .with_context(|| format!("bundle endpoint {}", self.bundle_endpoint))
            });
            match ready {
                Ok(()) => return Ok(()),
                Err(error) => last_error = format!("{error:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "spire-server not ready after {timeout:?}: {last_error}\nlog tail:\n{}",
            self.log_tail(40)
        )
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The SPIFFE ID SPIRE's https_spiffe bundle endpoint presents.
    pub fn server_id(&self) -> String {
        format!("spiffe://{}/spire/server", self.trust_domain)
    }

    pub fn bundle_endpoint_addr(&self) -> SocketAddr {
        self.bundle_endpoint
    }

    /// The port of SPIRE's agent API (`bind_port`), on 127.0.0.1.
    pub fn server_port(&self) -> u16 {
        self.server_port
    }

    pub fn bundle_endpoint_url(&self) -> String {
        format!("https://{}", self.bundle_endpoint)
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn config(&self) -> &str {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        match std::fs::read(&self.log) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(error) => format!("(cannot read {}: {error})", self.log.display()),
        }
    }

    /// Runs `spire-server <args> -socketPath <socket>` with the command timeout; its stdout, or
    /// an error with the exit status, stderr and stdout.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args).arg("-socketPath").arg(&self.socket);
        let what = format!("spire-server {}", args.join(" "));
        let out = run_with_timeout(cmd, stdin, self.command_timeout, &what)?;
        if !out.status.success() {
            bail!(
                "{what}: {}\nstderr:\n{}\nstdout:\n{}",
                out.status,
                out.stderr.trim_end(),
                out.stdout.trim_end()
            );
        }
        Ok(out.stdout)
    }

    pub fn healthcheck(&self) -> anyhow::Result<()> {
        self.cli(&["healthcheck"], None).map(drop)
    }

    /// `bundle show -format spiffe`: this server's own bundle as a SPIFFE JWKS.
    pub fn bundle_show_spiffe(&self) -> anyhow::Result<String> {
        self.cli(&["bundle", "show", "-format", "spiffe"], None)
    }

    /// This server's own bundle, parsed.
    pub fn bundle(&self) -> anyhow::Result<TrustDomainBundle> {
        let json = self.bundle_show_spiffe()?;
        let td = TrustDomain::new(&self.trust_domain)
            .map_err(|e| anyhow!("trust domain {}: {e}", self.trust_domain))?;
        TrustDomainBundle::from_spiffe_jwks(td, json.as_bytes())
            .map_err(|e| anyhow!("bundle show is not a SPIFFE bundle: {e}\n{json}"))
    }

    /// This server's X.509 authorities (CA certificates), DER, in bundle order.
    pub fn x509_authorities_der(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(self.bundle()?.x509_authorities)
    }

    /// `bundle list -format spiffe` as printed.
    pub fn bundle_list_spiffe_raw(&self) -> anyhow::Result<String> {
        self.cli(&["bundle", "list", "-format", "spiffe"], None)
    }

    /// The federated bundles SPIRE holds: (trust domain name, JWKS JSON).
    pub fn bundle_list_spiffe(&self) -> anyhow::Result<Vec<(String, String)>> {
        parse_bundle_list(&self.bundle_list_spiffe_raw()?)
    }

    /// The federated bundle SPIRE holds for `td`, if any.
    pub fn federated_bundle(&self, td: &str) -> anyhow::Result<Option<TrustDomainBundle>> {
        let name = trust_domain_name(td);
        let Some((_, json)) = self
            .bundle_list_spiffe()?
            .into_iter()
            .find(|(n, _)| n == name)
        else {
            return Ok(None);
        };
        let trust_domain =
            TrustDomain::new(name).map_err(|e| anyhow!("trust domain {name}: {e}"))?;
        TrustDomainBundle::from_spiffe_jwks(trust_domain, json.as_bytes())
            .map(Some)
            .map_err(|e| anyhow!("the bundle SPIRE holds for {name} does not parse: {e}\n{json}"))
    }

    /// `bundle set -format spiffe -id spiffe://<td>` with `json` on stdin.
    pub fn bundle_set_spiffe(&self, td: &str, json: &str) -> anyhow::Result<()> {
        let id = trust_domain_id(td);
        self.cli(
            &["bundle", "set", "-format", "spiffe", "-id", &id],
            Some(json.as_bytes()),
        )
        .map(drop)
    }

    /// `bundle delete -id spiffe://<td>` (mode restrict: fails while entries federate with it).
    pub fn bundle_delete(&self, td: &str) -> anyhow::Result<()> {
        let id = trust_domain_id(td);
        self.cli(&["bundle", "delete", "-id", &id], None).map(drop)
    }

    /// `federation create`: a federation relationship in the datastore (not the config file),
    /// with an optional bootstrap bundle (SPIFFE JWKS) for an https_spiffe endpoint's trust
    /// domain. SPIRE reloads relationships at once and polls the new peer immediately, so with a
    /// bootstrap bundle the first poll succeeds (unlike a config `federates_with`, whose first
    /// poll at startup fails without one and is retried only after 1 m).
    pub fn federation_create(
        &self,
        peer: &FederatesWith,
        bootstrap_bundle: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut args = vec![
            "federation".to_string(),
            "create".into(),
            "-trustDomain".into(),
            peer.trust_domain.clone(),
            "-bundleEndpointURL".into(),
            peer.bundle_endpoint_url.clone(),
            "-bundleEndpointProfile".into(),
        ];
        match &peer.profile {
            FederationProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                args.extend(["https_spiffe".into(), "-endpointSpiffeID".into()]);
                args.push(endpoint_spiffe_id.clone());
            }
            FederationProfile::HttpsWeb => args.push("https_web".into()),
        }
        if let Some(json) = bootstrap_bundle {
            let path = self.dir.path().join(format!(
                "bootstrap-{}-{}.json",
                peer.trust_domain,
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, json)?;
            args.extend([
                "-trustDomainBundlePath".into(),
                path.to_string_lossy().into_owned(),
                "-trustDomainBundleFormat".into(),
                "spiffe".into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args, None).map(drop)
    }

    /// `federation refresh -id <td>`: fetch a peer's bundle now. It does not move SPIRE's own
    /// poll schedule (a config peer whose first poll failed is still next polled 1 m after start).
    pub fn federation_refresh(&self, td: &str) -> anyhow::Result<()> {
        let name = trust_domain_name(td);
        self.cli(&["federation", "refresh", "-id", name], None)
            .map(drop)
    }

    /// `x509 mint -spiffeID <id> -ttl <ttl> -write <dir>`: (SVID chain PEM, PKCS#8 key PEM,
    /// bundle PEM). SPIRE caps the TTL at the CA's expiry (and says so on stderr).
    pub fn x509_mint(
        &self,
        spiffe_id: &str,
        ttl: Duration,
    ) -> anyhow::Result<(String, String, String)> {
        let out = self
            .dir
            .path()
            .join(format!("mint-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&out)?;
        let out_str = out.to_string_lossy().into_owned();
        let ttl = go_duration(ttl);
        self.cli(
            &[
                "x509",
                "mint",
                "-spiffeID",
                spiffe_id,
                "-ttl",
                &ttl,
                "-write",
                &out_str,
            ],
            None,
        )?;
        let read = |name: &str| {
            std::fs::read_to_string(out.join(name))
                .with_context(|| format!("x509 mint wrote no {name}"))
        };
        Ok((read("svid.pem")?, read("key.pem")?, read("bundle.pem")?))
    }

    /// `jwt mint -spiffeID <id> -audience <aud> -ttl <ttl>`: a JWT-SVID signed by this server's
    /// current JWT key (published in its bundle as a `jwt-svid` key). SPIRE caps the TTL at the
    /// key's expiry (and says so on stderr).
    pub fn jwt_mint(
        &self,
        spiffe_id: &str,
        audience: &str,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let ttl = go_duration(ttl);
        let stdout = self.cli(
            &[
                "jwt",
                "mint",
                "-spiffeID",
                spiffe_id,
                "-audience",
                audience,
                "-ttl",
                &ttl,
            ],
            None,
        )?;
        let token = stdout.trim();
        // Three base64url parts; the token itself stays out of the error.
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            bail!(
                "jwt mint printed no compact JWS ({} bytes, {} dot-separated parts)",
                token.len(),
                parts.len()
            );
        }
        Ok(token.to_string())
    }

    fn localauthority_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut full = vec!["localauthority", "x509"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-output", "json"]);
        let stdout = self.cli(&full, None)?;
        serde_json::from_str(&stdout)
            .with_context(|| format!("localauthority x509 {args:?}: not JSON: {stdout}"))
    }

    /// `localauthority x509 show`.
    pub fn x509_authority_state(&self) -> anyhow::Result<X509AuthorityState> {
        let v = self.localauthority_json(&["show"])?;
        let id = |slot: &str| {
            v.get(slot)
                .and_then(|s| s.get("authority_id"))
                .and_then(serde_json::Value::as_str)
                .filter(|id| !id.is_empty())
                .map(str::to_string)
        };
        Ok(X509AuthorityState {
            active: id("active"),
            prepared: id("prepared"),
            old: id("old"),
        })
    }

    /// `localauthority x509 prepare`: a new CA, added to the bundle at once; its authority ID.
    pub fn prepare_x509_authority(&self) -> anyhow::Result<String> {
        let v = self.localauthority_json(&["prepare"])?;
        v.get("prepared_authority")
            .and_then(|a| a.get("authority_id"))
            .and_then(serde_json::Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("localauthority x509 prepare: no authority_id in {v}"))
    }

    /// `localauthority x509 activate -authorityID <id>`: the prepared CA signs from now on.
    pub fn activate_x509_authority(&self, id: &str) -> anyhow::Result<()> {
        self.localauthority_json(&["activate", "-authorityID", id])
            .map(drop)
    }

    /// Prepare, then activate: the new authority's ID.
    pub fn rotate_x509_ca(&self) -> anyhow::Result<String> {
        let id = self.prepare_x509_authority()?;
        self.activate_x509_authority(&id)?;
        Ok(id)
    }

    /// `localauthority x509 taint -authorityID <id>` (the old authority only).
    pub fn taint_x509_authority(&self, id: &str) -> anyhow::Result<()> {
        self.localauthority_json(&["taint", "-authorityID", id])
            .map(drop)
    }

    /// `localauthority x509 revoke -authorityID <id>` (a tainted old authority): removed from
    /// the bundle.
    pub fn revoke_x509_authority(&self, id: &str) -> anyhow::Result<()> {
        self.localauthority_json(&["revoke", "-authorityID", id])
            .map(drop)
    }

    /// Polls `check` every `poll` until it returns `Ok(Some(_))`; an `Err` ends the wait. On
    /// timeout the error names `what` and carries the log tail.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        poll: Duration,
        mut check: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        loop {
            if let Some(value) = check()? {
                return Ok(value);
            }
            if started.elapsed() >= timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\nSPIRE log tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(poll);
        }
    }
}

impl Drop for SpireServer {
    fn drop(&mut self) {
        // Child::kill signals exactly this process's PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- spire-server ({}) log tail, {} ---\n{}\n---",
                self.trust_domain,
                self.log.display(),
                self.log_tail(60)
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    // (unused where this file is included by a harness = false benchmark, which drops #[test]s)
    #[allow(unused_imports)]
    use super::*;

    /// `spire-server bundle list -format spiffe` from v1.13.3 with two federated bundles,
    /// verbatim (both bundles carry the same CA certificate).
    const BUNDLE_LIST_SAMPLE: &str = r#"****************************************
* foreign.test
****************************************
{
    "keys": [
        {
            "use": "x509-svid",
            "kty": "EC",
            "crv": "P-256",
            "x": "7XUltLyvEmkzwgcE4HCIeBB2k7iMp9NrUwgpI7IYZGo",
            "y": "3_dDWpOnEO_hPxWk8CK6PoiKwO6rhH_OkQio1Hvhfxk",
            "x5c": [
                "MIIB3DCCAYOgAwIBAgIRAIsdY8+0rc4yrTll1y+gAIswCgYIKoZIzj0EAwIwPTEQMA4GA1UECgwHZm9yZWlnbjEpMCcGA1UEBRMgOGIxZDYzY2ZiNGFkY2UzMmFkMzk2NWQ3MmZhMDAwOGIwHhcNMjYxMjA3MTYyMTM1WhcNMjYxMjA3MTcyMTQ1WjA9MRAwDgYDVQQKDAdmb3JlaWduMSkwJwYDVQQFEyA4YjFkNjNjZmI0YWRjZTMyYWQzOTY1ZDcyZmEwMDA4YjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABO11JbS8rxJpM8IHBOBwiHgQdpO4jKfTa1MIKSOyGGRq3/dDWpOnEO/hPxWk8CK6PoiKwO6rhH/OkQio1HvhfxmjZDBiMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBTDo/ggZrz5sLQTZarqUyWCfjZcfDAgBgNVHREEGTAXhhVzcGlmZmU6Ly9mb3JlaWduLnRlc3QwCgYIKoZIzj0EAwIDRwAwRAIgOhmKW304NkGCSr8F6hA5oscQSk6evXruzTXuFmbhLgoCIF2decCMsrbu925ZNq//eI7kl4Cwb86KexofSx8EfUtc"
            ]
        }
    ],
    "spiffe_sequence": 7,
    "spiffe_refresh_hint": 30
}

****************************************
* other.test
****************************************
{
    "keys": [
        {
            "use": "x509-svid",
            "kty": "EC",
            "crv": "P-256",
            "x": "7XUltLyvEmkzwgcE4HCIeBB2k7iMp9NrUwgpI7IYZGo",
            "y": "3_dDWpOnEO_hPxWk8CK6PoiKwO6rhH_OkQio1Hvhfxk",
            "x5c": [
                "MIIB3DCCAYOgAwIBAgIRAIsdY8+0rc4yrTll1y+gAIswCgYIKoZIzj0EAwIwPTEQMA4GA1UECgwHZm9yZWlnbjEpMCcGA1UEBRMgOGIxZDYzY2ZiNGFkY2UzMmFkMzk2NWQ3MmZhMDAwOGIwHhcNMjYxMjA3MTYyMTM1WhcNMjYxMjA3MTcyMTQ1WjA9MRAwDgYDVQQKDAdmb3JlaWduMSkwJwYDVQQFEyA4YjFkNjNjZmI0YWRjZTMyYWQzOTY1ZDcyZmEwMDA4YjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABO11JbS8rxJpM8IHBOBwiHgQdpO4jKfTa1MIKSOyGGRq3/dDWpOnEO/hPxWk8CK6PoiKwO6rhH/OkQio1HvhfxmjZDBiMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBTDo/ggZrz5sLQTZarqUyWCfjZcfDAgBgNVHREEGTAXhhVzcGlmZmU6Ly9mb3JlaWduLnRlc3QwCgYIKoZIzj0EAwIDRwAwRAIgOhmKW304NkGCSr8F6hA5oscQSk6evXruzTXuFmbhLgoCIF2decCMsrbu925ZNq//eI7kl4Cwb86KexofSx8EfUtc"
            ]
        }
    ]
}
"#;

    #[test]
    fn bundle_list_output_parses_into_one_bundle_per_trust_domain() {
        let blocks = parse_bundle_list(BUNDLE_LIST_SAMPLE).unwrap();
        let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["foreign.test", "other.test"]);
        let foreign = TrustDomainBundle::from_spiffe_jwks(
            TrustDomain::new("foreign.test").unwrap(),
            blocks[0].1.as_bytes(),
        )
        .unwrap();
        assert_eq!(foreign.x509_authorities.len(), 1);
        assert_eq!(foreign.sequence_number, Some(7));
        assert_eq!(foreign.refresh_hint_seconds, Some(30));
        let other = TrustDomainBundle::from_spiffe_jwks(
            TrustDomain::new("other.test").unwrap(),
            blocks[1].1.as_bytes(),
        )
        .unwrap();
        assert_eq!(other.x509_authorities, foreign.x509_authorities);
        assert_eq!(other.sequence_number, None);

        // No federated bundles: no output at all.
        assert!(parse_bundle_list("").unwrap().is_empty());
        assert!(parse_bundle_list("{}\n").is_err());
    }

    #[test]
    fn config_names_every_setting() {
        let mut opts = SpireOptions::new("spire.test");
        opts.key_manager = KeyManager::Disk;
        opts.extra_plugins =
            "    NodeAttestor \"k8s_psat\" {\n        plugin_data {}\n    }".into();
        opts.refresh_hint = Duration::from_millis(2500);
        opts.federates_with = vec![
            FederatesWith::https_spiffe(
                "wimsey.test",
                "https://127.0.0.1:1/",
                "spiffe://wimsey.test/wimsey/bundle-endpoint",
            ),
            FederatesWith::https_web("web.test", "https://localhost:2/bundle"),
        ];
        let config = render_config(&ConfigInput {
            opts: &opts,
            dir: Path::new("/tmp/x"),
            server_port: 1000,
            bundle_port: 2000,
            socket: Path::new("/tmp/x/api.sock"),
        });
        for needle in [
            "trust_domain = \"spire.test\"",
            "refresh_hint = \"2500ms\"",
            "port = 2000",
            "bind_port = \"1000\"",
            "socket_path = \"/tmp/x/api.sock\"",
            "profile \"https_spiffe\" {}",
            "federates_with \"wimsey.test\" {",
            "endpoint_spiffe_id = \"spiffe://wimsey.test/wimsey/bundle-endpoint\"",
            "bundle_endpoint_profile \"https_web\" {}",
            "keys_path = \"/tmp/x/data/keys.json\"",
            "connection_string = \"/tmp/x/data/datastore.sqlite3\"",
            "    NodeAttestor \"k8s_psat\" {\n        plugin_data {}\n    }\n}\n",
        ] {
            assert!(config.contains(needle), "{needle} missing in\n{config}");
        }
    }
}
