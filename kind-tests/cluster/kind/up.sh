#!/usr/bin/env bash
# kind provider: a kind cluster named $KIND_CLUSTER (default wimsey), kubeconfig at $CLUSTER_KUBECONFIG,
# our images loaded with `kind load image-archive`. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
D=${WIMSEY_CLUSTER_DIR:-/var/lib/wimsey-cluster}
KC=${CLUSTER_KUBECONFIG:-$D/kubeconfig}
NAME=${KIND_CLUSTER:-wimsey}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.34.0}
mkdir -p "$D" "$(dirname "$KC")"
if ! kind get clusters 2>/dev/null | grep -x "$NAME" >/dev/null; then
	kind create cluster --name "$NAME" --image "$KIND_NODE_IMAGE" --config "$here/config.yaml" \
		--kubeconfig "$KC" --wait 120s
else
	kind export kubeconfig --name "$NAME" --kubeconfig "$KC"
fi
echo kind >"$D/provider"
echo node >"$D/level"
if [ -n "${WIMSEY_IMAGES_DIR:-}" ] && [ -d "$WIMSEY_IMAGES_DIR" ]; then
	for tar in "$WIMSEY_IMAGES_DIR"/*.tar; do
		[ -e "$tar" ] || continue
		kind load image-archive "$tar" --name "$NAME"
	done
fi
kubectl --kubeconfig "$KC" wait --for=condition=Ready node --all --timeout=120s
kubectl --kubeconfig "$KC" -n default wait --for=jsonpath='{.metadata.name}'=default serviceaccount/default --timeout=60s
echo "KUBECONFIG=$KC"
