//! `make bench-operator`: the reconciler on an in-process synthetic cluster (no API server):
//! 500 namespaces, 100 nodes, five ClusterSPIFFEIDs (one fallback, one masked pair), 10k and 50k
//! pods. Each size runs in a child process so its resident-memory figure starts clean.

// A benchmark: a broken setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use wimsey_core::entries::{
    ClusterSpiffeIdView, LabelSelector, NamespaceView, NodeView, PodView, RenderConfig,
};
use wimsey_core::spiffe_id::TrustDomain;
use wimsey_core::template::Value;
use wimsey_operator::reconcile::{ClusterState, ResourceMeta, SpecInput};
use wimsey_operator::store::EntryStore;

const NAMESPACES: usize = 500;
const NODES: usize = 100;
const POD_UPDATES: usize = 1000;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn selector(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        match_expressions: Vec::new(),
    })
}

fn spec(name: &str, created: i64, mutate: impl FnOnce(&mut ClusterSpiffeIdView)) -> SpecInput {
    let mut view = ClusterSpiffeIdView {
        name: name.into(),
        uid: format!("uid-{name}"),
        creation_timestamp: created,
        ..ClusterSpiffeIdView::default()
    };
    mutate(&mut view);
    SpecInput {
        meta: ResourceMeta {
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: Some(1),
            resource_version: None,
        },
        class_name: String::new(),
        view: Ok(view),
        status: None,
    }
}

/// The five ClusterSPIFFEIDs: a per-service-account ID for web pods and an identical, newer copy
/// of it (the masked pair), a fallback for every other pod, a per-team spec with DNS names and
/// an extra selector, and a narrow prod spec.
fn specs(team_template: &str) -> Vec<SpecInput> {
    let ns_sa =
        "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}";
    vec![
        spec("web", 1, |v| {
            v.spiffe_id_template = ns_sa.into();
            v.pod_selector = selector(&[("tier", "web")]);
        }),
        spec("web-copy", 2, |v| {
            v.spiffe_id_template = ns_sa.into();
            v.pod_selector = selector(&[("tier", "web")]);
        }),
        spec("fallback", 3, |v| {
            v.spiffe_id_template =
                "spiffe://example.org/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}".into();
            v.fallback = true;
        }),
        spec("team-1", 4, |v| {
            v.spiffe_id_template = team_template.into();
            v.namespace_selector = selector(&[("team", "t1")]);
            v.dns_name_templates = vec![
                "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}".into(),
            ];
            v.workload_selector_templates = vec!["k8s:ns:{{ .PodMeta.Namespace }}".into()];
        }),
        spec("prod-api", 5, |v| {
            v.spiffe_id_template =
                "spiffe://example.org/prod/{{ .PodMeta.Labels.app }}/{{ .PodMeta.Name }}".into();
            v.namespace_selector = selector(&[("env", "prod")]);
            v.pod_selector = selector(&[("app", "app3")]);
            v.federates_with = vec!["partner.example".into()];
        }),
    ]
}

fn pod(index: usize, pods_per_namespace: usize, version: u32) -> PodView {
    let namespace = format!("ns-{}", index / pods_per_namespace);
    let name = format!("pod-{index}");
    let container = Value::structure(
        "v1.Container",
        [
            ("Name", Value::from("app")),
            ("Image", Value::from("registry.example/app:1.2.3")),
        ],
    );
    PodView {
        uid: format!("00000000-0000-0000-0000-{index:012}"),
        labels: labels(&[
            ("app", format!("app{}", index % 20)),
            (
                "tier",
                if index.is_multiple_of(2) {
                    "web"
                } else {
                    "worker"
                }
                .to_owned(),
            ),
            ("pod-template-hash", format!("{:x}", version)),
        ]),
        service_account: format!("sa-{}", index % 5),
        node_name: format!("node-{}", index % NODES),
        extra_spec: BTreeMap::from([("Containers".to_owned(), Value::List(vec![container]))]),
        name,
        namespace,
        ..PodView::default()
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

/// One size, in this process; prints `key=value` lines for the parent.
fn run_size(pods: usize) {
    let pods_per_namespace = pods / NAMESPACES;
    let config = RenderConfig::new(
        TrustDomain::new("example.org").unwrap(),
        "bench",
        "cluster.local",
    );
    let rss_before = rss_kib();

    let mut state = ClusterState::new(config, "wimsey.");
    let store = EntryStore::new();
    for n in 0..NAMESPACES {
        state.apply_namespace(NamespaceView {
            name: format!("ns-{n}"),
            labels: labels(&[
                ("team", format!("t{}", n % 10)),
                (
                    "env",
                    if n.is_multiple_of(2) { "prod" } else { "dev" }.to_owned(),
                ),
            ]),
        });
    }
    for n in 0..NODES {
        state.apply_node(NodeView {
            name: format!("node-{n}"),
            uid: format!("node-uid-{n}"),
            ..NodeView::default()
        });
    }
    for input in specs("spiffe://example.org/team/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}") {
        state.apply_spec(input);
    }
    for index in 0..pods {
        state.apply_pod(pod(index, pods_per_namespace, 0));
    }
    let started = Instant::now();
    let report = state.reconcile(&store);
    let initial = started.elapsed();
    let rss_after = rss_kib();
    assert_eq!(report.pods_rendered, pods);

    // Single pod updates: a label change (a rollout's new template hash), rendered and stored.
    let mut latencies = Vec::with_capacity(POD_UPDATES);
    for update in 0..POD_UPDATES {
        let index = (update * 7919) % pods;
        let started = Instant::now();
        state.apply_pod(pod(index, pods_per_namespace, 1 + update as u32));
        let report = state.reconcile(&store);
        latencies.push(started.elapsed());
        assert_eq!(report.pods_rendered, 1);
    }
    latencies.sort();

    // One ClusterSPIFFEID change: the per-team spec (50 of 500 namespaces).
    let started = Instant::now();
    for input in specs("spiffe://example.org/team-v2/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}")
    {
        state.apply_spec(input);
    }
    let team_report = state.reconcile(&store);
    let team_change = started.elapsed();

    // A cluster-wide one: the fallback spec (no selector) gets a new template.
    let mut fallback =
        specs("spiffe://example.org/team-v2/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}")
            .remove(2);
    if let Ok(view) = &mut fallback.view {
        view.spiffe_id_template =
            "spiffe://example.org/v2/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}".into();
    }
    let started = Instant::now();
    state.apply_spec(fallback);
    let wide_report = state.reconcile(&store);
    let wide_change = started.elapsed();

    let (masked, failed) = state.masked_and_failed();
    println!("entries={}", store.entry_count());
    println!("masked={masked}");
    println!("failed={failed}");
    println!("initial_ms={:.1}", initial.as_secs_f64() * 1e3);
    println!(
        "pod_p50_us={:.1}",
        percentile(&latencies, 0.50).as_secs_f64() * 1e6
    );
    println!(
        "pod_p99_us={:.1}",
        percentile(&latencies, 0.99).as_secs_f64() * 1e6
    );
    println!("team_change_ms={:.1}", team_change.as_secs_f64() * 1e3);
    println!("team_change_pods={}", team_report.pods_rendered);
    println!("wide_change_ms={:.1}", wide_change.as_secs_f64() * 1e3);
    println!("wide_change_pods={}", wide_report.pods_rendered);
    println!(
        "mib_per_10k={:.1}",
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0 / (pods as f64 / 10_000.0)
    );
}

fn measure(pods: usize) -> BTreeMap<String, String> {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--pods", &pods.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|a| a == "--pods") {
        run_size(args[position + 1].parse().unwrap());
        return;
    }
    // `cargo test --all-targets` runs this binary too, unoptimized and without `--bench`: a
    // small cluster proves the bench still works without spending minutes of the test run.
    if !args.iter().any(|a| a == "--bench") {
        let smoke = measure(1_000);
        assert!(smoke.contains_key("initial_ms"), "{smoke:?}");
        println!("bench smoke run (1000 pods) ok; `make bench-operator` measures");
        return;
    }
    let small = measure(10_000);
    let large = measure(50_000);
    let row = |label: &str, key: &str, unit: &str, target: &str, scm: &str| {
        println!(
            "| {label:<38} | {:>10} | {:>10} | {target:<16} | {scm} |",
            format!("{} {unit}", small[key]),
            format!("{} {unit}", large[key]),
        );
    };
    println!(
        "wimsey-operator reconciler, synthetic cluster in-process ({NAMESPACES} namespaces, {NODES} nodes, 5 ClusterSPIFFEIDs incl. one fallback and one masked pair; --release)"
    );
    println!();
    println!(
        "| {:<38} | {:>10} | {:>10} | {:<16} | spire-controller-manager (published user reports, not measured here) |",
        "measure", "10k pods", "50k pods", "target"
    );
    println!(
        "|{}|{}|{}|{}|{}|",
        "-".repeat(40),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(18),
        "-".repeat(70)
    );
    row(
        "entries in the store",
        "entries",
        "",
        "",
        "30k pods -> 300k-500k entries in SPIRE (SCM #705)",
    );
    row("masked entries", "masked", "", "", "");
    row(
        "initial full render",
        "initial_ms",
        "ms",
        "50k < 2000 ms",
        "full relist of every entry each gcInterval (10 s) and trigger",
    );
    row(
        "single pod update p50",
        "pod_p50_us",
        "us",
        "",
        "registration delays up to ~15 min (SCM PR #712)",
    );
    row(
        "single pod update p99",
        "pod_p99_us",
        "us",
        "p99 < 5000 us",
        "",
    );
    row(
        "ClusterSPIFFEID change (50 namespaces)",
        "team_change_ms",
        "ms",
        "",
        "",
    );
    row("  pods re-rendered", "team_change_pods", "", "", "");
    row(
        "ClusterSPIFFEID change (all namespaces)",
        "wide_change_ms",
        "ms",
        "",
        "",
    );
    row("  pods re-rendered", "wide_change_pods", "", "", "");
    row(
        "resident memory per 10k pods",
        "mib_per_10k",
        "MiB",
        "< 60 MiB",
        ">= 512 MiB at ~4k pods, i.e. >1,200 MiB per 10k (helm #851)",
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let num = |m: &BTreeMap<String, String>, k: &str| m[k].parse::<f64>().unwrap();
    println!();
    println!(
        "targets: initial render 50k < 2 s: {}; pod change p99 < 5 ms: {}; < 60 MiB per 10k pods: {}",
        verdict(num(&large, "initial_ms") < 2000.0),
        verdict(num(&small, "pod_p99_us") < 5000.0 && num(&large, "pod_p99_us") < 5000.0),
        verdict(num(&small, "mib_per_10k") < 60.0 && num(&large, "mib_per_10k") < 60.0),
    );
}
