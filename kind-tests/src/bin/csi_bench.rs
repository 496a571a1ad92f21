//! wimsey-csi-bench (`make bench-csi-cluster`): how long a pod waits for its identity on the real
//! cluster. Creates BENCH_CSI_PODS pods of spiffe-probe (one at a time, so each is measured on a quiet
//! node) with a csi.wimsey.dev Workload API volume, and reads from each pod's log when its first
//! X.509-SVID arrived. The client and this program share the machine's clock, so
//!
//! - create -> SVID: from the pod's create call to the client's first SVID (scheduling, sandbox,
//!   NodePublishVolume, container start, first fetch);
//! - start -> SVID: from the client process's start to its first SVID (what the plugin adds once the
//!   sandbox is up; target < 1 s).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, LogParams, PostParams,
};
use serde_json::json;
use wimsey_kind_tests::wait::poll_until;
use wimsey_kind_tests::wimsey::ensure_installed;
use wimsey_kind_tests::workloads::probe_pod;
use wimsey_kind_tests::{Cluster, TestNamespace};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `(at_ms, start_ms)` of the first `x509 ... at_ms=<n> start_ms=<n>` line of spiffe-probe.
fn first_svid_times(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().find(|l| l.starts_with("x509 "))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
    };
    Some((field("at_ms=")?, field("start_ms=")?))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(what: &str, mut ms: Vec<u64>) {
    ms.sort_unstable();
    println!(
        "{what:<28} n={:<3} p50={:>5} ms  p99={:>5} ms  min={:>5} ms  max={:>5} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.first().copied().unwrap_or(0),
        ms.last().copied().unwrap_or(0)
    );
}

async fn measure(ns: &TestNamespace, n: usize) -> Result<()> {
    let pods: Api<Pod> = ns.api();
    let (mut create_to_svid, mut start_to_svid) = (Vec::new(), Vec::new());
    for i in 0..n {
        let name = format!("probe-{i}");
        let created = now_ms();
        pods.create(&PostParams::default(), &probe_pod(&name)?)
            .await?;
        let (at, start) = poll_until(
            &format!("first SVID of {name}"),
            Duration::from_secs(120),
            || async {
                let log = pods.logs(&name, &LogParams::default()).await?;
                Ok(first_svid_times(&log))
            },
        )
        .await?;
        create_to_svid.push(at.saturating_sub(created));
        start_to_svid.push(at.saturating_sub(start));
        pods.delete(&name, &DeleteParams::default()).await?;
    }
    println!("bench-csi (cluster): {n} pods, one at a time, on a node-level local cluster");
    report("pod create -> first SVID", create_to_svid);
    report("client start -> first SVID", start_to_svid.clone());
    let p99 = {
        let mut s = start_to_svid;
        s.sort_unstable();
        percentile(&s, 99.0)
    };
    if p99 >= 1000 {
        bail!("client start -> first SVID p99 is {p99} ms, target < 1000 ms");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::var("BENCH_CSI_PODS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("BENCH_CSI_PODS")?
        .unwrap_or(20);
    let Some(cluster) = Cluster::connect_node("wimsey-csi-bench").await? else {
        bail!("no node-level cluster configured: run `make bench-csi-cluster`");
    };
    ensure_installed(&cluster).await?;
    let ns = TestNamespace::create(&cluster, "bench-csi").await?;
    let csids = Api::<DynamicObject>::all_with(
        cluster.client(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "spire.spiffe.io",
            "v1alpha1",
            "ClusterSPIFFEID",
        )),
    );
    let csid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": ns.name()},
        "spec": {
            "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}",
            "namespaceSelector": {"matchLabels": BTreeMap::from([("kubernetes.io/metadata.name", ns.name())])},
        },
    }))?;
    csids.create(&PostParams::default(), &csid).await?;
    let result = measure(&ns, n).await;
    let _ = csids.delete(ns.name(), &DeleteParams::default()).await;
    ns.finish(result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_svid_line() {
        let log = "error code=Unavailable msg=x\n\
                   x509 spiffe://a/b serial=1 not_after=x at_ms=1500 start_ms=1200\n\
                   x509 spiffe://a/b serial=2 not_after=x at_ms=9000 start_ms=1200\n";
        assert_eq!(first_svid_times(log), Some((1500, 1200)));
        assert_eq!(first_svid_times("nothing yet"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
