#!/usr/bin/env bash
# Entry point of `make cluster-up|cluster-down|cluster-status`.
#   CLUSTER_PROVIDER=kind|local|auto (auto: kind when a kind binary and a working container engine exist)
#   CLUSTER_LEVEL=node|control-plane  (local provider; kind is always a full node)
# The provider that brought the cluster up is recorded in $WIMSEY_CLUSTER_DIR/provider, so down and
# status act on what is up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
D=${WIMSEY_CLUSTER_DIR:-/var/lib/wimsey-cluster}
cmd=${1:?usage: cluster.sh up|down|status|provider}

detect() {
	case ${CLUSTER_PROVIDER:-auto} in
	kind | local) echo "$CLUSTER_PROVIDER"; return ;;
	auto | "") ;;
	*) echo "CLUSTER_PROVIDER must be kind, local or auto, not $CLUSTER_PROVIDER" >&2; exit 2 ;;
	esac
	if command -v kind >/dev/null 2>&1; then
		if { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; } ||
			{ command -v podman >/dev/null 2>&1 && timeout 10 podman info >/dev/null 2>&1; }; then
			echo kind; return
		fi
	fi
	echo local
}

recorded() { cat "$D/provider" 2>/dev/null || true; }

case $cmd in
provider)
	# what is up, else what would come up
	p=$(recorded); [ -n "$p" ] && [ -z "${CLUSTER_PROVIDER:-}" -o "${CLUSTER_PROVIDER:-}" = auto ] && { echo "$p"; exit 0; }
	detect ;;
up)
	p=$(detect); r=$(recorded)
	if [ -n "$r" ] && [ "$r" != "$p" ]; then
		echo "a $r cluster is up; run 'make cluster-down' before bringing up a $p one" >&2; exit 1
	fi
	echo "cluster provider: $p" >&2
	"$here/$p/up.sh" ;;
down)
	r=$(recorded); p=${r:-$(detect)}
	"$here/$p/down.sh" ;;
status)
	r=$(recorded)
	[ -n "$r" ] || { echo "no cluster up (provider would be: $(detect))"; exit 1; }
	"$here/$r/status.sh" ;;
*) echo "usage: cluster.sh up|down|status|provider" >&2; exit 2 ;;
esac
