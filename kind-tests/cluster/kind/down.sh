#!/usr/bin/env bash
set -euo pipefail
D=${WIMSEY_CLUSTER_DIR:-/var/lib/wimsey-cluster}
NAME=${KIND_CLUSTER:-wimsey}
if kind get clusters 2>/dev/null | grep -x "$NAME" >/dev/null; then kind delete cluster --name "$NAME"; fi
rm -rf "$D"
echo "kind cluster $NAME down" >&2
