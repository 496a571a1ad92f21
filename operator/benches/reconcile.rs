//! `make bench-operator`: the reconciler on an in-process cluster (no API server): 500
//! namespaces, 100 nodes, five ClusterSPIFFEIDs (one fallback, one masked pair, one with
//! dnsNameTemplates over `.PodSpec` fields, one with a workloadSelectorTemplate), 10k and 50k
//! realistic pods (the shape is in `support/mod.rs`). Every object goes the production way: a
//! k8s-openapi object decoded from JSON, turned into what the watcher keeps, applied to the
//! state. Each size runs in a child process so its resident-memory figures start clean.

// A benchmark: a broken setup should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use support::{NAMESPACES, NODES};
use wimsey_core::entries::{ClusterSpiffeIdView, LabelSelector, RenderConfig};
use wimsey_core::spiffe_id::TrustDomain;
use wimsey_core::template::FieldTree;
use wimsey_operator::reconcile::{ClusterState, KeptKind, PodDirectory, ResourceMeta, SpecInput};
use wimsey_operator::store::EntryStore;
use wimsey_operator::views;

const POD_UPDATES: usize = 1000;
/// spire-controller-manager v0.6.6, 10k realistic pods, 100 nodes, 500 namespaces, 5
/// ClusterSPIFFEIDs: resident memory after convergence (issue 10; not measured by this bench).
const SCM_MIB_PER_10K: &str = "578 MiB (measured elsewhere)";

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

/// What the variable parts of the five specs are set to.
struct Variant<'a> {
    team_template: &'a str,
    /// prod-api's workloadSelectorTemplates.
    prod_selectors: &'a [&'a str],
}

const INITIAL: Variant<'static> = Variant {
    team_template: "spiffe://example.org/team/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}",
    prod_selectors: &["k8s:sa:{{ .PodSpec.ServiceAccountName }}"],
};

/// The five ClusterSPIFFEIDs: a per-service-account ID for web pods and an identical, newer copy
/// of it (the masked pair), a fallback for every other pod, a per-team spec with DNS names from
/// `.PodSpec` fields, and a narrow prod spec with a workload selector template.
fn specs(variant: &Variant<'_>) -> Vec<SpecInput> {
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
            v.spiffe_id_template = variant.team_template.into();
            v.namespace_selector = selector(&[("team", "t1")]);
            v.dns_name_templates = vec![
                "{{ .PodSpec.ServiceAccountName }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}".into(),
                "{{ (index .PodSpec.Containers 0).Name }}.{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.pod.{{ .ClusterDomain }}".into(),
            ];
        }),
        spec("prod-api", 5, |v| {
            v.spiffe_id_template =
                "spiffe://example.org/prod/{{ .PodMeta.Labels.app }}/{{ .PodMeta.Name }}".into();
            v.namespace_selector = selector(&[("env", "prod")]);
            v.pod_selector = selector(&[("app", "app3")]);
            v.federates_with = vec!["partner.example".into()];
            v.workload_selector_templates = variant
                .prod_selectors
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        }),
    ]
}

/// What the Pod watch does with one object: the production conversion (keeping what the
/// templates reach), then the state and the node API's directory.
fn feed_pod(state: &mut ClusterState, directory: &PodDirectory, pod: &Pod, kept: &FieldTree) {
    let view = views::pod_view_keeping(pod, kept);
    directory.apply(&view);
    state.apply_pod(view);
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
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
    let per_10k = |kib: u64| kib as f64 / 1024.0 / (pods as f64 / 10_000.0);
    let config = RenderConfig::new(
        TrustDomain::new("example.org").unwrap(),
        "bench",
        "cluster.local",
    );
    let rss_before = status_kib("VmRSS:");

    let mut state = ClusterState::new(config, "wimsey.");
    let directory = PodDirectory::new();
    let store = EntryStore::new();
    for n in 0..NAMESPACES {
        state.apply_namespace(views::namespace_view(&support::namespace(n)));
    }
    for input in specs(&INITIAL) {
        state.apply_spec(input);
    }
    // The Pod and Node watches start once the ClusterSPIFFEIDs are listed.
    let kept = state.kept_fields();
    for n in 0..NODES {
        state.apply_node(views::node_view_keeping(&support::node(n), &kept.tree));
    }
    // The initial list: objects arrive one by one and are dropped once converted.
    let started = Instant::now();
    for index in 0..pods {
        feed_pod(
            &mut state,
            &directory,
            &support::pod(index, pods_per_namespace, 0),
            &kept.tree,
        );
    }
    let list = started.elapsed();
    let started = Instant::now();
    let report = state.reconcile(&store);
    let initial = started.elapsed();
    assert_eq!(report.pods_rendered, pods);
    let peak_initial = status_kib("VmHWM:");

    // Single pod updates: a label change (a rollout's new template hash), converted, rendered
    // and stored.
    let mut latencies = Vec::with_capacity(POD_UPDATES);
    let mut versions = vec![0u32; pods];
    for update in 0..POD_UPDATES {
        let index = (update * 7919) % pods;
        versions[index] = 1 + update as u32;
        let object = support::pod(index, pods_per_namespace, versions[index]);
        let started = Instant::now();
        feed_pod(&mut state, &directory, &object, &kept.tree);
        let report = state.reconcile(&store);
        latencies.push(started.elapsed());
        assert_eq!(report.pods_rendered, 1);
    }
    latencies.sort();
    let rss_steady = status_kib("VmRSS:");

    // One ClusterSPIFFEID change: the per-team spec (50 of 500 namespaces).
    let team_v2 = Variant {
        team_template: "spiffe://example.org/team-v2/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}",
        ..INITIAL
    };
    let started = Instant::now();
    for input in specs(&team_v2) {
        state.apply_spec(input);
    }
    let team_report = state.reconcile(&store);
    let team_change = started.elapsed();

    // A change that reaches a field no template reached before: the container image, as a
    // workload selector. Where the watcher keeps only what templates reach, this relists.
    let widened = Variant {
        prod_selectors: &[
            "k8s:sa:{{ .PodSpec.ServiceAccountName }}",
            "k8s:pod-image:{{ (index .PodSpec.Containers 0).Image }}",
        ],
        ..team_v2
    };
    let started = Instant::now();
    for input in specs(&widened) {
        state.apply_spec(input);
    }
    // The relist: the watches of the widened kinds list everything again.
    let mut widen_relisted = 0usize;
    let relists = state.relists_wanted();
    assert!(!relists.is_empty(), "the image was not kept before");
    let widened_fields = state.kept_fields();
    for (kind, _) in relists {
        match kind {
            KeptKind::Pods => {
                for (index, version) in versions.iter().enumerate() {
                    let object = support::pod(index, pods_per_namespace, *version);
                    feed_pod(&mut state, &directory, &object, &widened_fields.tree);
                    widen_relisted += 1;
                }
            }
            KeptKind::Nodes => {
                for n in 0..NODES {
                    let node = views::node_view_keeping(&support::node(n), &widened_fields.tree);
                    state.apply_node(node);
                }
            }
        }
        state.relisted(kind, widened_fields.version(kind));
    }
    let widen_report = state.reconcile(&store);
    let widen_change = started.elapsed();

    // A cluster-wide one: the fallback spec (no selector) gets a new template.
    let mut fallback = specs(&widened).remove(2);
    if let Ok(view) = &mut fallback.view {
        view.spiffe_id_template =
            "spiffe://example.org/v2/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}".into();
    }
    let started = Instant::now();
    state.apply_spec(fallback);
    let wide_report = state.reconcile(&store);
    let wide_change = started.elapsed();
    let rss_end = status_kib("VmRSS:");

    let (masked, failed) = state.masked_and_failed();
    println!("entries={}", store.entry_count());
    println!("masked={masked}");
    println!("failed={failed}");
    println!("list_ms={:.1}", list.as_secs_f64() * 1e3);
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
    println!("widen_change_ms={:.1}", widen_change.as_secs_f64() * 1e3);
    println!("widen_change_pods={}", widen_report.pods_rendered);
    println!("widen_relisted={widen_relisted}");
    println!("wide_change_ms={:.1}", wide_change.as_secs_f64() * 1e3);
    println!("wide_change_pods={}", wide_report.pods_rendered);
    println!(
        "mib_per_10k={:.1}",
        per_10k(rss_steady.saturating_sub(rss_before))
    );
    println!(
        "peak_mib_per_10k={:.1}",
        per_10k(peak_initial.saturating_sub(rss_before))
    );
    println!(
        "end_mib_per_10k={:.1}",
        per_10k(rss_end.saturating_sub(rss_before))
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
            "| {label:<44} | {:>10} | {:>10} | {target:<16} | {scm} |",
            format!("{} {unit}", small[key]),
            format!("{} {unit}", large[key]),
        );
    };
    println!(
        "wimsey-operator reconciler, realistic pods in-process ({NAMESPACES} namespaces, {NODES} nodes, 5 ClusterSPIFFEIDs incl. one fallback, one masked pair, dnsNameTemplates over .PodSpec, a workloadSelectorTemplate; --release)"
    );
    println!();
    println!(
        "| {:<44} | {:>10} | {:>10} | {:<16} | spire-controller-manager |",
        "measure", "10k pods", "50k pods", "target"
    );
    println!(
        "|{}|{}|{}|{}|{}|",
        "-".repeat(46),
        "-".repeat(12),
        "-".repeat(12),
        "-".repeat(18),
        "-".repeat(30)
    );
    row("entries in the store", "entries", "", "", "");
    row("masked entries", "masked", "", "", "");
    row(
        "initial list (decode result -> state)",
        "list_ms",
        "ms",
        "",
        "",
    );
    row(
        "initial full render",
        "initial_ms",
        "ms",
        "50k < 2000 ms",
        "",
    );
    row("single pod update p50", "pod_p50_us", "us", "", "");
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
        "ClusterSPIFFEID change widening kept fields",
        "widen_change_ms",
        "ms",
        "",
        "",
    );
    row("  pods relisted", "widen_relisted", "", "", "");
    row("  pods re-rendered", "widen_change_pods", "", "", "");
    row(
        "ClusterSPIFFEID change (all namespaces)",
        "wide_change_ms",
        "ms",
        "",
        "",
    );
    row("  pods re-rendered", "wide_change_pods", "", "", "");
    row(
        "resident memory per 10k pods, steady",
        "mib_per_10k",
        "MiB",
        "< 60 MiB",
        SCM_MIB_PER_10K,
    );
    row(
        "resident memory per 10k pods, peak (list)",
        "peak_mib_per_10k",
        "MiB",
        "< 120 MiB",
        "",
    );
    row(
        "resident memory per 10k pods, at the end",
        "end_mib_per_10k",
        "MiB",
        "",
        "",
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let num = |m: &BTreeMap<String, String>, k: &str| m[k].parse::<f64>().unwrap();
    let both = |k: &str, limit: f64| num(&small, k) < limit && num(&large, k) < limit;
    println!();
    println!(
        "targets: initial render 50k < 2 s: {}; pod update p99 < 5 ms: {}; < 60 MiB per 10k pods steady: {}; < 120 MiB per 10k pods peak: {}",
        verdict(num(&large, "initial_ms") < 2000.0),
        verdict(both("pod_p99_us", 5000.0)),
        verdict(both("mib_per_10k", 60.0)),
        verdict(both("peak_mib_per_10k", 120.0)),
    );
}
