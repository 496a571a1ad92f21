//! What a failed test prints: every pod's phase, conditions and container states, the namespace's
//! events in order, and each container's recent logs.

use std::fmt::Write;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, LogParams};
use kube::{Api, Client};

/// A human-readable dump of the namespace. Never fails: errors are part of the text.
pub async fn dump_namespace(client: &Client, ns: &str) -> String {
    let mut out = format!("===== diagnostics for namespace {ns} =====\n");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    match pods.list(&ListParams::default()).await {
        Ok(list) => {
            for pod in &list.items {
                out.push_str(&describe_pod(pod));
                for (container, previous) in containers_with_logs(pod) {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let lp = LogParams {
                        container: Some(container.clone()),
                        previous,
                        tail_lines: Some(50),
                        ..LogParams::default()
                    };
                    let which = if previous { " (previous)" } else { "" };
                    match pods.logs(&name, &lp).await {
                        Ok(logs) => {
                            let _ = writeln!(out, "  --- logs {name}/{container}{which} ---");
                            for line in logs.lines() {
                                let _ = writeln!(out, "  | {line}");
                            }
                        }
                        Err(err) => {
                            let _ = writeln!(out, "  --- logs {name}/{container}{which}: {err}");
                        }
                    }
                }
            }
            if list.items.is_empty() {
                out.push_str("no pods\n");
            }
        }
        Err(err) => {
            let _ = writeln!(out, "listing pods: {err}");
        }
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    match events.list(&ListParams::default()).await {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(|e| {
                e.last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or_else(|| e.event_time.as_ref().map(|t| t.0))
                    .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
            });
            let _ = writeln!(out, "events ({}):", items.len());
            for e in items {
                let _ = writeln!(
                    out,
                    "  {} {} {}/{} x{}: {}",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.involved_object.kind.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default(),
                    e.count.unwrap_or(1),
                    e.message.unwrap_or_default().trim()
                );
            }
        }
        Err(err) => {
            let _ = writeln!(out, "listing events: {err}");
        }
    }
    out.push_str("===== end of diagnostics =====\n");
    out
}

fn describe_pod(pod: &Pod) -> String {
    let mut out = String::new();
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.clone().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("<unscheduled>");
    let _ = writeln!(
        out,
        "pod {name}: phase={} node={node} ip={}",
        status.phase.as_deref().unwrap_or("?"),
        status.pod_ip.as_deref().unwrap_or("-")
    );
    for c in status.conditions.unwrap_or_default() {
        let _ = writeln!(
            out,
            "  condition {}={} {} {}",
            c.type_,
            c.status,
            c.reason.unwrap_or_default(),
            c.message.unwrap_or_default()
        );
    }
    let all = status
        .init_container_statuses
        .unwrap_or_default()
        .into_iter()
        .chain(status.container_statuses.unwrap_or_default());
    for cs in all {
        let state = cs.state.map(|s| {
            if let Some(w) = s.waiting {
                format!(
                    "waiting {} {}",
                    w.reason.unwrap_or_default(),
                    w.message.unwrap_or_default()
                )
            } else if let Some(t) = s.terminated {
                format!(
                    "terminated exit={} {} {}",
                    t.exit_code,
                    t.reason.unwrap_or_default(),
                    t.message.unwrap_or_default()
                )
            } else if s.running.is_some() {
                "running".to_string()
            } else {
                "?".to_string()
            }
        });
        let _ = writeln!(
            out,
            "  container {}: ready={} restarts={} image={} state={}",
            cs.name,
            cs.ready,
            cs.restart_count,
            cs.image,
            state.unwrap_or_default().trim()
        );
    }
    out
}

/// (container, previous?) pairs worth fetching logs for: every started container, plus the previous
/// instance of a restarted one.
fn containers_with_logs(pod: &Pod) -> Vec<(String, bool)> {
    let status = pod.status.clone().unwrap_or_default();
    let mut v = Vec::new();
    let all = status
        .init_container_statuses
        .unwrap_or_default()
        .into_iter()
        .chain(status.container_statuses.unwrap_or_default());
    for cs in all {
        let started = cs
            .state
            .as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
        if started {
            v.push((cs.name.clone(), false));
        }
        if cs.restart_count > 0 {
            v.push((cs.name.clone(), true));
        }
    }
    v
}
