#!/usr/bin/env bash
set -euo pipefail
D=${WIMSEY_CLUSTER_DIR:-/var/lib/wimsey-cluster}
KC=${CLUSTER_KUBECONFIG:-$D/kubeconfig}
NAME=${KIND_CLUSTER:-wimsey}
echo "provider:   kind (cluster $NAME)"
echo "level:      node"
echo "kubeconfig: $KC"
kind get clusters 2>/dev/null | grep -x "$NAME" >/dev/null || { echo "  kind cluster $NAME NOT found"; exit 1; }
kubectl --kubeconfig "$KC" get nodes -o wide | sed 's/^/  /'
