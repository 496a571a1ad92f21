//! The realistic cluster `make bench-operator` feeds the reconciler: the objects as the API server
//! sends them (JSON decoded into k8s-openapi types), not hand-built views.
//!
//! Pod shape (what a Deployment's ReplicaSet creates, as in the side-by-side measurement against
//! spire-controller-manager in issue 10):
//! - pods come in Deployments of [`REPLICAS`] pods; pods of one Deployment share their labels,
//!   annotations and spec, and differ in name, UID, node, IPs and start times;
//! - metadata: name, generateName, namespace, uid, resourceVersion, creationTimestamp, one
//!   ownerReference (the ReplicaSet, controller), 15 labels, 10 annotations (two of them 64-char
//!   checksums), two managedFields entries (kube-controller-manager, kubelet);
//! - spec: 2 containers (app and proxy), each with command, args, 8 env vars (2 from the
//!   downward API), resources (requests and limits), liveness and readiness probes, ports and 3
//!   volume mounts; volumes: a ConfigMap, an emptyDir and the projected service-account volume
//!   (token, kube-root-ca.crt, namespace); plus the fields the API server defaults (dnsPolicy,
//!   restartPolicy, schedulerName, tolerations, securityContext, priority, ...);
//! - status: phase Running, 4 conditions, IPs, 2 container statuses.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::json;

pub(crate) const NAMESPACES: usize = 500;
pub(crate) const NODES: usize = 100;
/// Pods per Deployment.
pub(crate) const REPLICAS: usize = 10;

fn hex64(seed: usize, salt: &str) -> String {
    // Deterministic, checksum-looking; not a hash of anything.
    let mut out = String::with_capacity(64);
    let mut x = (seed as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.len() as u64;
    while out.len() < 64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(64);
    out
}

fn env(deployment: &str, namespace: &str) -> serde_json::Value {
    json!([
        {"name": "APP_NAME", "value": deployment},
        {"name": "APP_ENV", "value": "production"},
        {"name": "LOG_LEVEL", "value": "info"},
        {"name": "LOG_FORMAT", "value": "json"},
        {"name": "HTTP_PORT", "value": "8080"},
        {"name": "UPSTREAM_URL", "value": format!("http://{deployment}-upstream.{namespace}.svc.cluster.local:8080")},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
    ])
}

fn probe(path: &str, port: i32) -> serde_json::Value {
    json!({"httpGet": {"path": path, "port": port, "scheme": "HTTP"}, "initialDelaySeconds": 5,
           "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3})
}

fn container(
    name: &str,
    image: &str,
    port: i32,
    deployment: &str,
    namespace: &str,
    token_volume: &str,
) -> serde_json::Value {
    json!({
        "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
        "command": [format!("/usr/local/bin/{name}"), "serve"],
        "args": ["--config=/etc/app/config.yaml", format!("--listen=:{port}"), "--metrics=:9090", "--graceful-shutdown=20s"],
        "env": env(deployment, namespace),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "livenessProbe": probe("/healthz", port),
        "readinessProbe": probe("/readyz", port),
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app", "readOnly": true},
            {"name": "data", "mountPath": "/var/lib/app"},
            {"name": token_volume, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
        ],
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
    })
}

/// Pod `index` of a cluster with `pods_per_namespace` pods per namespace; `version` changes the
/// pod-template-hash label (what a single pod update changes in the bench).
pub(crate) fn pod(index: usize, pods_per_namespace: usize, version: u32) -> Pod {
    let ns_index = index / pods_per_namespace;
    let namespace = format!("ns-{ns_index}");
    let deployment_index = index / REPLICAS;
    let app = format!("app{}", deployment_index % 20);
    let deployment = format!("{app}-d{deployment_index}");
    let hash = format!(
        "{:08x}",
        (deployment_index as u64).wrapping_mul(2_654_435_761) as u32
    );
    let template_hash = if version == 0 {
        hash.clone()
    } else {
        format!("{hash}-{version}")
    };
    let replica_set = format!("{deployment}-{hash}");
    let name = format!("{replica_set}-{index:05x}");
    let token_volume = format!("kube-api-access-{:05x}", index % 0xfffff);
    let tier = if deployment_index.is_multiple_of(2) {
        "web"
    } else {
        "worker"
    };
    let team = format!("team-{}", ns_index % 10);
    let image = format!(
        "registry.example.com/{team}/{app}:1.{}.{}",
        deployment_index % 7,
        deployment_index % 3
    );
    let uid = format!("00000000-0000-4000-8000-{index:012}");
    let node = format!("node-{}", index % NODES);
    let json = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "generateName": format!("{replica_set}-"), "namespace": namespace,
            "uid": uid, "resourceVersion": format!("{}", 100_000 + index),
            "creationTimestamp": "2026-08-01T10:00:00Z",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set,
                                 "uid": format!("11111111-0000-4000-8000-{deployment_index:012}"),
                                 "controller": true, "blockOwnerDeletion": true}],
            "labels": {
                "app": app, "app.kubernetes.io/name": app, "app.kubernetes.io/instance": deployment,
                "app.kubernetes.io/version": "1.2.3", "app.kubernetes.io/component": "backend",
                "app.kubernetes.io/part-of": format!("{team}-platform"), "app.kubernetes.io/managed-by": "Helm",
                "helm.sh/chart": format!("{app}-0.4.1"), "tier": tier, "team": team, "env": "production",
                "release": deployment, "version": "v1", "pod-template-hash": template_hash,
                "security.istio.io/tlsMode": "istio",
            },
            "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": "9090", "prometheus.io/path": "/metrics",
                "checksum/config": hex64(deployment_index, "config"), "checksum/secret": hex64(deployment_index, "secret"),
                "kubectl.kubernetes.io/restartedAt": "2026-07-30T08:12:44Z",
                "kubectl.kubernetes.io/default-container": "app",
                "cluster-autoscaler.kubernetes.io/safe-to-evict": "true",
                "sidecar.istio.io/inject": "false", "example.com/owner": format!("{team}@example.com"),
            },
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                 "time": "2026-08-01T10:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                              "f:ownerReferences": {".": {}}},
                              "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}},
                                         "f:dnsPolicy": {}, "f:restartPolicy": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "subresource": "status",
                 "time": "2026-08-01T10:00:09Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {},
                              "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}},
            ],
        },
        "spec": {
            "containers": [
                container("app", &image, 8080, &deployment, &namespace, &token_volume),
                container("proxy", "registry.example.com/platform/proxy:2.4.1", 15001, &deployment, &namespace, &token_volume),
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": format!("{deployment}-config"), "defaultMode": 420}},
                {"name": "data", "emptyDir": {}},
                {"name": token_volume, "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ]}},
            ],
            "serviceAccountName": format!("sa-{}", deployment_index % 5),
            "serviceAccount": format!("sa-{}", deployment_index % 5),
            "nodeName": node, "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler", "priority": 0,
            "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
        },
        "status": {
            "phase": "Running", "hostIP": format!("10.0.{}.{}", index % NODES / 250, index % NODES % 250 + 1),
            "podIP": format!("10.{}.{}.{}", 64 + index / 65_536 % 64, index / 256 % 256, index % 256),
            "startTime": "2026-08-01T10:00:01Z", "qosClass": "Burstable",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-08-01T10:00:01Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-08-01T10:00:09Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-08-01T10:00:09Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-08-01T10:00:00Z"},
            ],
            "containerStatuses": [
                {"name": "app", "image": image, "imageID": format!("{image}@sha256:{}", hex64(deployment_index, "image")),
                 "containerID": format!("containerd://{}", hex64(index, "app")), "ready": true, "restartCount": 0,
                 "started": true, "state": {"running": {"startedAt": "2026-08-01T10:00:03Z"}}},
                {"name": "proxy", "image": "registry.example.com/platform/proxy:2.4.1",
                 "imageID": format!("registry.example.com/platform/proxy@sha256:{}", hex64(7, "proxy")),
                 "containerID": format!("containerd://{}", hex64(index, "proxy")), "ready": true, "restartCount": 0,
                 "started": true, "state": {"running": {"startedAt": "2026-08-01T10:00:04Z"}}},
            ],
        },
    });
    serde_json::from_value(json).expect("the realistic pod is a valid Pod")
}

pub(crate) fn namespace(index: usize) -> Namespace {
    serde_json::from_value(json!({
        "metadata": {"name": format!("ns-{index}"), "uid": format!("22222222-0000-4000-8000-{index:012}"),
                     "labels": {"team": format!("t{}", index % 10),
                                "env": if index.is_multiple_of(2) { "prod" } else { "dev" },
                                "kubernetes.io/metadata.name": format!("ns-{index}")}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }))
    .expect("the namespace is a valid Namespace")
}

pub(crate) fn node(index: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("node-{index}"), "uid": format!("node-uid-{index}"),
                     "labels": {"kubernetes.io/hostname": format!("node-{index}"), "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": format!("zone-{}", index % 3),
                                "node.kubernetes.io/instance-type": "m6i.2xlarge"},
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": format!("10.64.{index}.0/24"), "podCIDRs": [format!("10.64.{index}.0/24")],
                 "providerID": format!("aws:///eu-west-1a/i-{index:017x}")},
        "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                   "nodeInfo": {"kubeletVersion": "v1.34.0", "osImage": "Ubuntu 24.04", "architecture": "amd64",
                                "bootID": "b", "containerRuntimeVersion": "containerd://2.1.0", "kernelVersion": "6.8.0",
                                "kubeProxyVersion": "", "machineID": "m", "operatingSystem": "linux", "systemUUID": "s"}},
    }))
    .expect("the node is a valid Node")
}
