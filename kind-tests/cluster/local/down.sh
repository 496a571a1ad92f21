#!/usr/bin/env bash
# Local provider teardown: our processes (by pid file only), containers, mounts under the kubelet dir and
# containerd's dirs, network namespaces, the bridge, the node interface, firewall chain, kernel settings
# and all state. Safe to run when nothing is up.
. "$(dirname "$0")/common.sh"
[ "$(id -u)" = 0 ] || die "the local provider needs root"

# 1. kubelet first, so nothing restarts containers behind our back; then the control-plane controllers.
stop_proc kubelet 30
stop_proc kube-proxy
stop_proc kube-scheduler
stop_proc kube-controller-manager

# 2. containers: kill every task in our containerd, then delete them (the shims exit with them).
if pid_alive containerd && ctr_ version >/dev/null 2>&1; then
	tasks=$(ctr_ tasks ls -q 2>/dev/null || true)
	for t in $tasks; do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
	for t in $tasks; do
		wait_until "task $t stopped" 10 bash -c "! ctr --address '$CONTAINERD_SOCK' -n k8s.io tasks ls | awk '\$1==\"$t\" && \$3==\"RUNNING\"' | grep -q ." || true
		ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true
	done
	for c in $(ctr_ containers ls -q 2>/dev/null || true); do ctr_ containers rm "$c" >/dev/null 2>&1 || true; done
fi
stop_proc containerd 20

# 3. shims that outlived containerd: containerd wrote their pids next to each task's bundle.
if [ -d "$RUN/containerd/state" ]; then
	while IFS= read -r f; do
		pid=$(cat "$f" 2>/dev/null || true)
		[ -n "$pid" ] && [ -d "/proc/$pid" ] || continue
		log "killing leftover $(basename "$f" .pid) pid $pid ($f)"
		kill -KILL "$pid" 2>/dev/null || true
	done < <(find "$RUN/containerd/state" -name 'shim.pid' -o -name 'init.pid' 2>/dev/null)
fi

# 4. control plane
stop_proc kube-apiserver
stop_proc etcd

# 5. mounts: pod volumes under the kubelet dir, container rootfs and sandbox files, pod netns
for m in $(mounts_under "$KUBELET_DIR" "$RUN" "$D"); do
	umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
done
for ns in /run/netns/cni-*; do
	[ -e "$ns" ] || continue
	# only the ones our containerd made: CNI cached them under our network's name
	grep -qs "$(basename "$ns")" /var/lib/cni/results/wimsey-* || continue
	umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true
	rm -f "$ns"
done
rm -f /var/lib/cni/results/wimsey-* 2>/dev/null || true

# 6. network
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
ip -4 addr show dev "$NODE_IF" | grep " $NODE_IP/32 " >/dev/null && ip addr del "$NODE_IP/32" dev "$NODE_IF"
# kube-proxy's rules (KUBE-SERVICES, ...): removed by kube-proxy itself; then the chains kubelet made.
if command -v iptables >/dev/null; then
	[ -x "$K8S_BIN/kube-proxy" ] && { "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; }
	for ipt in iptables ip6tables; do
		command -v "$ipt" >/dev/null || continue
		for chain in INPUT OUTPUT; do
			while "$ipt" -D "$chain" -j KUBE-FIREWALL 2>/dev/null; do :; done
		done
		for table in filter nat mangle; do
			for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
				"$ipt" -t "$table" -F "$chain" 2>/dev/null && "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
			done
		done
	done
fi
if command -v iptables >/dev/null; then
	while iptables -D FORWARD -j "$FW_CHAIN" 2>/dev/null; do :; done
	iptables -F "$FW_CHAIN" 2>/dev/null || true
	iptables -X "$FW_CHAIN" 2>/dev/null || true
fi

# 7. kernel settings kubelet and the bridge changed
if [ -s "$D/sysctl.saved" ]; then
	while IFS= read -r kv; do sysctl -qw "$kv" >/dev/null || true; done <"$D/sysctl.saved"
fi

# 8. pod cgroups kubelet created (empty once the containers are gone)
for h in /sys/fs/cgroup/*/; do
	[ -d "$h/kubepods" ] || continue
	find "$h/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
done

# 9. state
left=$(mounts_under "$KUBELET_DIR" "$RUN" "$D")
[ -z "$left" ] || die "mounts left, not removing state: $left"
rm -rf "$D" "$RUN" "$KUBELET_DIR"
log "local cluster down"
