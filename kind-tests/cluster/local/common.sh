# Shared settings and helpers of the local provider. Sourced, not run.
# shellcheck shell=bash
set -euo pipefail
LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$LOCAL_DIR/versions.sh"

C=${WIMSEY_CACHE:-/var/cache/wimsey}
# Persistent state (PKI, etcd data, containerd root, logs) and runtime state (pid files, sockets).
D=${WIMSEY_CLUSTER_DIR:-/var/lib/wimsey-cluster}
RUN=${WIMSEY_CLUSTER_RUN:-/run/wimsey-cluster}
KUBECONFIG_OUT=${CLUSTER_KUBECONFIG:-$D/kubeconfig}
LEVEL=${CLUSTER_LEVEL:-node}

K8S_BIN=$C/k8s-$K8S_VERSION/bin
ETCD_BIN=$C/etcd-$ETCD_VERSION/bin

NODE_NAME=wimsey-node
# The node's address is an extra address on lo (this kernel has no dummy links), so nothing depends on
# (or listens on behalf of) eth0, and traffic to it never leaves the machine. kubelet rejects 127/8.
NODE_IF=lo
NODE_IP=10.200.0.1
POD_CIDR=10.244.0.0/24
BRIDGE=wimseybr0
SERVICE_CIDR=10.96.0.0/24
SERVICE_IP=10.96.0.1
ETCD_PORT=23790
ETCD_PEER_PORT=23800
APISERVER_PORT=16443
KUBELET_DIR=/var/lib/kubelet
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
FW_CHAIN=WIMSEY-FORWARD

log() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# pid_alive NAME: the process recorded in $RUN/NAME.pid is alive and is still the binary we started.
pid_alive() {
	local f="$RUN/$1.pid" pid exe
	[ -s "$f" ] || return 1
	pid=$(cat "$f")
	[ -d "/proc/$pid" ] || return 1
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
	[ -n "$exe" ] && [ "$exe" = "$(cat "$RUN/$1.exe" 2>/dev/null)" ]
}

# start_proc NAME BINARY ARGS...: start in its own session (so it outlives make), log to $D/logs/NAME.log.
start_proc() {
	local name=$1; shift
	if pid_alive "$name"; then
		log "$name: already running (pid $(cat "$RUN/$name.pid"))"
		return 0
	fi
	mkdir -p "$D/logs" "$RUN"
	log "$name: starting"
	setsid "$@" >>"$D/logs/$name.log" 2>&1 </dev/null &
	local pid=$!
	echo "$pid" >"$RUN/$name.pid"
	readlink -f "$1" >"$RUN/$name.exe"
}

# stop_proc NAME [TIMEOUT_S]: SIGTERM the pid from the pid file, SIGKILL after the timeout.
stop_proc() {
	local name=$1 timeout=${2:-20} pid i
	if ! pid_alive "$name"; then
		rm -f "$RUN/$name.pid" "$RUN/$name.exe"
		return 0
	fi
	pid=$(cat "$RUN/$name.pid")
	log "$name: stopping pid $pid"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < timeout * 10; i++)); do
		[ -d "/proc/$pid" ] || break
		# a zombie child of nobody we wait for still counts as gone
		[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
		sleep 0.1
	done
	if [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
		log "$name: still alive after ${timeout}s, SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$RUN/$name.pid" "$RUN/$name.exe"
}

# wait_until DESCRIPTION TIMEOUT_S COMMAND...: poll COMMAND every 0.2 s.
wait_until() {
	local what=$1 timeout=$2 i; shift 2
	for ((i = 0; i < timeout * 5; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	return 1
}

# write_if_changed FILE < content: replace FILE only when the content differs, atomically (kube-proxy exits
# when its config file changes, and a truncate-then-write is a change).
write_if_changed() {
	local f=$1 tmp
	tmp=$(mktemp "$f.XXXXXX")
	cat >"$tmp"
	if [ -f "$f" ] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv -f "$tmp" "$f"; fi
}

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" "$@"; }

# Every mount point at or below one of the given directories, deepest first.
mounts_under() {
	local p
	for p in "$@"; do
		awk -v p="$p" '{ m = $5; gsub(/\\040/, " ", m); if (m == p || index(m, p "/") == 1) print m }' /proc/self/mountinfo
	done | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- | uniq
}
