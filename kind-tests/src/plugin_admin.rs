//! Reading the CSI plugin's admin address (`/readyz`, `/metrics`) on a node, through the API
//! server's pod port-forward: the plugin runs on the pod network, and the tests have no kubectl.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::Cluster;
use crate::wimsey::NAMESPACE;

/// The plugin's admin port (the DaemonSet's `admin` container port).
pub const ADMIN_PORT: u16 = 9809;

/// The name of the running plugin pod on `node`.
pub async fn plugin_pod_on(cluster: &Cluster, node: &str) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let selector = ListParams::default().labels("app.kubernetes.io/name=wimsey-csi");
    pods.list(&selector)
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .find_map(|p| p.metadata.name)
        .with_context(|| format!("no wimsey-csi pod on node {node}"))
}

/// `GET path` on the admin port of plugin pod `pod`: the HTTP status and the body.
pub async fn admin_get(cluster: &Cluster, pod: &str, path: &str) -> Result<(u16, String)> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let mut forwarder = pods
        .portforward(pod, &[ADMIN_PORT])
        .await
        .with_context(|| format!("port-forward to {pod}:{ADMIN_PORT}"))?;
    let mut stream = forwarder
        .take_stream(ADMIN_PORT)
        .context("the port-forward has no stream")?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    drop(stream);
    forwarder.join().await.ok();
    parse_http_response(&String::from_utf8_lossy(&response))
}

/// The status and body of an HTTP/1.x response.
pub fn parse_http_response(response: &str) -> Result<(u16, String)> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The value of the sample whose name and labels are exactly `series` (as in
/// `name{label="v"}`) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(series))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// Fails unless `series` is in `text` with a value of at least `min`.
pub fn ensure_at_least(text: &str, series: &str, min: f64) -> Result<()> {
    let value = sample(text, series);
    ensure!(
        value.is_some_and(|v| v >= min),
        "{series} is {value:?}, want >= {min}, in:\n{text}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_responses_parse() {
        let text = "# TYPE x counter\n\
                    x_total{mode=\"files\"} 2\n\
                    x_total{mode=\"files\",result=\"ok\"} 7\n\
                    up 1\n";
        assert_eq!(sample(text, "x_total{mode=\"files\"}"), Some(2.0));
        assert_eq!(
            sample(text, "x_total{mode=\"files\",result=\"ok\"}"),
            Some(7.0)
        );
        assert_eq!(sample(text, "up"), Some(1.0));
        assert_eq!(sample(text, "down"), None);
        assert!(ensure_at_least(text, "up", 1.0).is_ok());
        assert!(ensure_at_least(text, "up", 2.0).is_err());

        let (status, body) =
            parse_http_response("HTTP/1.0 503 Service Unavailable\r\nx: y\r\n\r\nnot ready")
                .expect("parses");
        assert_eq!((status, body.as_str()), (503, "not ready"));
        assert!(parse_http_response("garbage").is_err());
    }
}
