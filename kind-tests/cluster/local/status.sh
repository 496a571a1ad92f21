#!/usr/bin/env bash
# Local provider status: components, pids, kubeconfig, nodes. Exit 0 when the recorded level is healthy.
. "$(dirname "$0")/common.sh"
level=$(cat "$D/level" 2>/dev/null || echo none)
echo "provider:   local"
echo "level:      $level"
echo "kubeconfig: $KUBECONFIG_OUT"
echo "versions:   kubernetes $K8S_VERSION, etcd $ETCD_VERSION (binaries in $C)"
rc=0
comps=(etcd kube-apiserver)
[ "$level" = node ] && comps+=(containerd kube-controller-manager kube-scheduler kubelet kube-proxy)
for c in "${comps[@]}"; do
	if pid_alive "$c"; then printf '  %-24s running (pid %s)\n' "$c" "$(cat "$RUN/$c.pid")"
	else printf '  %-24s NOT running\n' "$c"; rc=1; fi
done
if [ "$level" = none ]; then echo "not up"; exit 1; fi
if [ -s "$KUBECONFIG_OUT" ] && [ -x "$K8S_BIN/kubectl" ]; then
	kubectl_ get --raw /readyz >/dev/null 2>&1 && echo "  api: ready" || { echo "  api: NOT ready"; rc=1; }
	[ "$level" = node ] && kubectl_ get nodes -o wide 2>&1 | sed 's/^/  /'
fi
exit $rc
