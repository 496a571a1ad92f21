//! A private control plane for one benchmark run: a real etcd and kube-apiserver (the cached
//! upstream binaries `make cluster-tools` builds), on free loopback ports, with their data, PKI,
//! kubeconfig and logs in a temporary directory that is removed afterwards. No kubelet, no
//! controllers: pods are bound to fake nodes by `spec.nodeName`.
//!
//! Binaries: `WIMSEY_ETCD` and `WIMSEY_KUBE_APISERVER` (set by `make bench-spire`).
//! Authentication is a static token in `system:masters` (`--token-auth-file`); the serving
//! certificate is signed by a CA made here with openssl. The ServiceAccount admission plugin is
//! off, so pods may name service accounts that do not exist (no token controller runs anyway).

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD_ENV: &str = "WIMSEY_ETCD";
pub const APISERVER_ENV: &str = "WIMSEY_KUBE_APISERVER";

/// The binaries, when both variables name files.
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let etcd = PathBuf::from(std::env::var_os(ETCD_ENV)?);
    let apiserver = PathBuf::from(std::env::var_os(APISERVER_ENV)?);
    (etcd.is_file() && apiserver.is_file()).then_some((etcd, apiserver))
}

/// A child process killed (by its PID) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics with the log tail when the process has exited.
    pub fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Child::kill signals exactly this process's PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log tail ({}) ---\n{}\n---",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over plain HTTP/1.0 on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// `openssl <args>`, the arguments split at spaces, in `dir`.
fn openssl(dir: &Path, args: &str) {
    let output = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// etcd + kube-apiserver, stopped (by PID) and removed on drop.
#[derive(Debug)]
pub struct ControlPlane {
    // Dropped first: the API server before etcd, both before the directory.
    apiserver: Proc,
    etcd: Proc,
    pub kubeconfig: PathBuf,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    pub fn start(etcd_bin: &Path, apiserver_bin: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wimsey-bench-cp-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        // PKI: a CA, the API server's serving certificate, the service-account key.
        openssl(
            d,
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=wimsey-bench-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
        );
        openssl(
            d,
            "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver",
        );
        std::fs::write(
            d.join("apiserver.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            d,
            "x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile apiserver.ext -out apiserver.crt",
        );
        openssl(d, "ecparam -name prime256v1 -genkey -noout -out sa.ec");
        openssl(d, "pkcs8 -topk8 -nocrypt -in sa.ec -out sa.key");
        openssl(d, "ec -in sa.ec -pubout -out sa.pub");
        let token = "wimsey-bench-admin-token";
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},bench-admin,bench-admin-uid,\"system:masters\"\n"),
        )
        .unwrap();

        let (client_port, peer_port, port) = (free_port(), free_port(), free_port());
        let mut etcd = Command::new(etcd_bin);
        etcd.args([
            "--name",
            "bench",
            "--data-dir",
            &d.join("etcd").to_string_lossy(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client_port}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client_port}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
            "--initial-cluster",
            &format!("bench=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync",
            "--quota-backend-bytes=8589934592",
            "--log-level",
            "warn",
        ]);
        let mut etcd = Proc::spawn("etcd", etcd, d.join("etcd.log"));
        let started = Instant::now();
        while http_get(client_port, "/health").is_none_or(|(code, _)| code != 200) {
            etcd.check_running();
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "etcd not healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        let path = |f: &str| d.join(f).to_string_lossy().into_owned();
        let mut apiserver = Command::new(apiserver_bin);
        apiserver.args([
            format!("--etcd-servers=http://127.0.0.1:{client_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", path("certs")),
            format!("--tls-cert-file={}", path("apiserver.crt")),
            format!("--tls-private-key-file={}", path("apiserver.key")),
            format!("--token-auth-file={}", path("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", path("sa.pub")),
            format!("--service-account-signing-key-file={}", path("sa.key")),
            "--profiling=false".into(),
            "--v=1".into(),
        ]);
        let mut apiserver = Proc::spawn("kube-apiserver", apiserver, d.join("kube-apiserver.log"));
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: bench\n  context: {{ cluster: bench, user: admin }}\ncurrent-context: bench\n",
                path("ca.crt")
            ),
        )
        .unwrap();
        let started = Instant::now();
        loop {
            apiserver.check_running();
            let ready = Command::new("curl")
                .args(["-sf", "--cacert", &path("ca.crt"), "-H"])
                .arg(format!("Authorization: Bearer {token}"))
                .arg(format!("https://127.0.0.1:{port}/readyz"))
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "kube-apiserver not ready:\n{}",
                apiserver.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        Self {
            apiserver,
            etcd,
            kubeconfig,
            port,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver.pid()
    }

    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}
