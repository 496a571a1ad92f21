//! Running a command in a pod's container (the `exec` subresource over a websocket).

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::AsyncReadExt;

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    /// The API server's final status (`Success`, or `Failure` with the exit code in `details`).
    pub status: Option<Status>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status.as_ref().and_then(|s| s.status.as_deref()) == Some("Success")
    }
}

/// Runs `command` in `container` (or the pod's only container) and collects its output.
pub async fn exec(
    pods: &Api<Pod>,
    pod: &str,
    container: Option<&str>,
    command: &[&str],
) -> Result<ExecOutput> {
    let mut params = AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(true);
    if let Some(c) = container {
        params = params.container(c);
    }
    let mut proc = pods
        .exec(pod, command.iter().copied(), &params)
        .await
        .with_context(|| format!("exec {command:?} in pod {pod}"))?;
    let mut out = proc.stdout().context("no stdout stream")?;
    let mut err = proc.stderr().context("no stderr stream")?;
    let status = proc.take_status().context("no status channel")?;
    let (mut so, mut se) = (Vec::new(), Vec::new());
    let (r1, r2) = tokio::join!(out.read_to_end(&mut so), err.read_to_end(&mut se));
    r1.context("reading stdout")?;
    r2.context("reading stderr")?;
    let status = status.await;
    proc.join().await.context("exec session")?;
    Ok(ExecOutput {
        stdout: String::from_utf8_lossy(&so).into_owned(),
        stderr: String::from_utf8_lossy(&se).into_owned(),
        status,
    })
}

/// Like [`exec`], but a command that does not succeed is an error (with its stderr).
pub async fn exec_ok(
    pods: &Api<Pod>,
    pod: &str,
    container: Option<&str>,
    command: &[&str],
) -> Result<String> {
    let out = exec(pods, pod, container, command).await?;
    if !out.success() {
        bail!(
            "{command:?} in pod {pod} failed: {:?}\nstderr: {}",
            out.status,
            out.stderr
        );
    }
    Ok(out.stdout)
}
