#!/usr/bin/env bash
# Build the upstream Go binaries the local cluster needs, once per version, into a cache outside the repo:
#   $WIMSEY_CACHE/k8s-$K8S_VERSION/bin/   kube-apiserver kube-controller-manager kube-scheduler kubelet
#                                         kube-proxy kubectl
#   $WIMSEY_CACHE/etcd-$ETCD_VERSION/bin/ etcd etcdctl
#   $WIMSEY_CACHE/helm-$HELM_VERSION/bin/helm
#   $WIMSEY_CACHE/kubeconform-$KUBECONFORM_VERSION/bin/kubeconform
#   $WIMSEY_CACHE/spire-$SPIRE_VERSION/bin/spire-server  (the federation peer in the interop tests)
#   $WIMSEY_CACHE/spire-$SPIRE_VERSION/bin/spire-agent   (static; the SPIRE stack e2e's agent image)
# Everything comes from the Go module proxy through generated wrapper modules (see
# shared/reference/local-cluster.md §1-2): k/k's go.mod pins its staging modules at v0.0.0, so the wrapper
# replaces each of them with the published v0.Y.Z tag. A component is rebuilt only when its `--version`
# output does not match. Usage: build.sh [all|k8s|etcd|helm|kubeconform|spire|spire-agent]...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"

GO=${GO:-go}
C=${WIMSEY_CACHE:-/var/cache/wimsey}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOMODCACHE=${GOMODCACHE_OVERRIDE:-$C/go/mod} GOCACHE=${GOCACHE_OVERRIDE:-$C/go/build}
# 2 cores shared with other builds: keep go's parallelism explicit.
GOBUILD_P=${GOBUILD_P:-2}
mkdir -p "$C"

log() { printf '[build %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# Run a build step under /usr/bin/time when present, recording wall time and peak RSS in the cache.
timed() {
	local name=$1; shift
	local stats="$C/build-stats-$name.txt"
	local t0; t0=$(date +%s)
	if [ -x /usr/bin/time ]; then
		/usr/bin/time -f "%e s wall, %M KiB peak RSS (largest single process)" -o "$stats.tmp" "$@"
	else
		"$@"; echo "n/a" >"$stats.tmp"
	fi
	echo "$name: $(cat "$stats.tmp"), finished $(date -u +%FT%TZ), total $(( $(date +%s) - t0 )) s" >"$stats"
	rm -f "$stats.tmp"
	log "$(cat "$stats")"
}

build_k8s() {
	local K=$K8S_VERSION S="v0.${K8S_VERSION#v1.}"
	local minor=${K#v1.}; minor=${minor%%.*}
	local out="$C/k8s-$K/bin" src="$C/k8s-$K/src"
	local want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
	local ok=1 b
	for b in "${want[@]}"; do
		[ -x "$out/$b" ] || { ok=0; break; }
	done
	# (no `| grep -q` on version output: with pipefail, an early grep exit is a SIGPIPE failure)
	if [ $ok = 1 ] && [ "$("$out/kube-apiserver" --version 2>/dev/null || true)" = "Kubernetes $K" ]; then
		log "kubernetes $K: cached in $out"; return 0
	fi
	log "kubernetes $K: building (wrapper module in $src, staging modules at $S)"
	mkdir -p "$src" "$out"
	(
		cd "$src"
		rm -f go.mod go.sum
		"$GO" mod init example.local/wimsey-k8sbins >/dev/null 2>&1
		local kkmod
		kkmod=$("$GO" mod download -json "k8s.io/kubernetes@$K" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
		[ -n "$kkmod" ] || { echo "cannot download k8s.io/kubernetes@$K" >&2; exit 1; }
		local args=() m
		while read -r m; do
			args+=("-replace=$m=$m@$S")
		done < <(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$kkmod")
		[ ${#args[@]} -gt 20 ] || { echo "unexpected staging list in $kkmod" >&2; exit 1; }
		"$GO" mod edit "${args[@]}" -require="k8s.io/kubernetes@$K" -godebug=default=go1.24
		local tools=() b
		for b in "${want[@]}"; do tools+=("-tool=k8s.io/kubernetes/cmd/$b"); done
		"$GO" mod edit "${tools[@]}"
		"$GO" mod tidy
	)
	local V="-X k8s.io/component-base/version.gitVersion=$K -X k8s.io/component-base/version.gitMajor=1"
	V+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
	V+=" -X k8s.io/client-go/pkg/version.gitVersion=$K -X k8s.io/client-go/pkg/version.gitMajor=1"
	V+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
	local pkgs=()
	for b in "${want[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
	# One invocation for all binaries so they share compilation.
	(cd "$src" && timed "k8s-$K" "$GO" build -p "$GOBUILD_P" -trimpath -tags selinux,notest \
		-ldflags "-s -w $V" -o "$out/" "${pkgs[@]}")
	"$out/kube-apiserver" --version
}

build_etcd() {
	local E=$ETCD_VERSION out="$C/etcd-$ETCD_VERSION/bin" src="$C/etcd-$ETCD_VERSION/src"
	local have; have=$("$out/etcd" --version 2>/dev/null || true)
	if [ -x "$out/etcdctl" ] && [[ $have == *"etcd Version: ${E#v}"* ]]; then
		log "etcd $E: cached in $out"; return 0
	fi
	log "etcd $E: building"
	mkdir -p "$src" "$out"
	(
		cd "$src"
		rm -f go.mod go.sum
		"$GO" mod init example.local/wimsey-etcdbins >/dev/null 2>&1
		"$GO" mod edit -tool=go.etcd.io/etcd/server/v3 -tool=go.etcd.io/etcd/etcdctl/v3 \
			-require="go.etcd.io/etcd/server/v3@$E" -require="go.etcd.io/etcd/etcdctl/v3@$E"
		"$GO" mod tidy
		timed "etcd-$E" bash -c "'$GO' build -p '$GOBUILD_P' -trimpath -ldflags '-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$E' -o '$out/etcd' go.etcd.io/etcd/server/v3 && '$GO' build -p '$GOBUILD_P' -trimpath -ldflags '-s -w' -o '$out/etcdctl' go.etcd.io/etcd/etcdctl/v3"
	)
	have=$("$out/etcd" --version); echo "${have%%$'\n'*}"
}

# helm v3 and kubeconform have no replace/exclude: plain `go install` into the versioned dir.
build_simple() {
	local name=$1 pkg=$2 ver=$3 check=$4 ldflags=${5:-}
	local out="$C/$name-$ver/bin"
	local have; have=$("$out/$name" $check 2>/dev/null || true)
	if [[ $have == *"${ver#v}"* ]]; then
		log "$name $ver: cached in $out"; return 0
	fi
	log "$name $ver: building"
	mkdir -p "$out"
	GOBIN="$out" timed "$name-$ver" "$GO" install -p "$GOBUILD_P" -trimpath -ldflags "-s -w $ldflags" "$pkg@$ver"
}

build_helm() {
	build_simple helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "version --short" \
		"-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}
build_kubeconform() {
	build_simple kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" "-v" \
		"-X main.version=$KUBECONFORM_VERSION"
}

# SPIRE publishes no version list on the proxy, so `go install pkg@version` is refused: a wrapper module
# requires it as a tool, then builds it. Newer releases need a dependency version the proxy refuses.
# Two things differ from the other builds: cgo is on (the sqlite3 datastore is cgo-only; without it
# `run` fails with "sqlite3 is not a supported dialect when CGO is not enabled"), and gittag carries
# no leading "v" (SPIRE's datastore MustParse()s it as semver at init: with the "v" every command panics).
build_spire() {
	local V=$SPIRE_VERSION out="$C/spire-$SPIRE_VERSION/bin" src="$C/spire-$SPIRE_VERSION/src"
	local have=
	[ -x "$out/spire-server" ] && have=$("$out/spire-server" --version 2>&1 || true)
	if [[ $have == "${V#v}"* && $("$GO" version -m "$out/spire-server" 2>&1) == *CGO_ENABLED=1* ]]; then
		log "spire-server $V: cached in $out"; return 0
	fi
	log "spire-server $V: building (wrapper module in $src)"
	mkdir -p "$src" "$out"
	(
		cd "$src"
		rm -f go.mod go.sum
		"$GO" mod init example.local/wimsey-spirebins >/dev/null 2>&1
		"$GO" get -tool "github.com/spiffe/spire/cmd/spire-server@$V"
		export CGO_ENABLED=1
		timed "spire-$V" "$GO" build -p "$GOBUILD_P" -trimpath \
			-ldflags "-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${V#v}" \
			-o "$out/spire-server" github.com/spiffe/spire/cmd/spire-server
	)
	"$out/spire-server" --version 2>&1
}

# spire-agent, for the SPIRE stack e2e (a DaemonSet pod of our own image): the same wrapper-module way
# as spire-server, in a sibling module, but static (CGO_ENABLED=0): the agent has no sqlite3, and our
# OCI writer packs a single executable with no libc beside it.
build_spire_agent() {
	local V=$SPIRE_VERSION out="$C/spire-$SPIRE_VERSION/bin" src="$C/spire-$SPIRE_VERSION/src-agent"
	local have=
	[ -x "$out/spire-agent" ] && have=$("$out/spire-agent" --version 2>&1 || true)
	if [[ $have == "${V#v}"* && $("$GO" version -m "$out/spire-agent" 2>&1) == *CGO_ENABLED=0* ]]; then
		log "spire-agent $V: cached in $out"; return 0
	fi
	log "spire-agent $V: building (wrapper module in $src, static)"
	mkdir -p "$src" "$out"
	(
		cd "$src"
		rm -f go.mod go.sum
		"$GO" mod init example.local/wimsey-spireagent >/dev/null 2>&1
		"$GO" get -tool "github.com/spiffe/spire/cmd/spire-agent@$V"
		timed "spire-agent-$V" "$GO" build -p "$GOBUILD_P" -trimpath \
			-ldflags "-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${V#v}" \
			-o "$out/spire-agent.tmp" github.com/spiffe/spire/cmd/spire-agent
	)
	mv "$out/spire-agent.tmp" "$out/spire-agent"
	"$out/spire-agent" --version 2>&1
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
	case $what in
	all) build_etcd; build_k8s; build_helm; build_kubeconform ;;
	control-plane) build_etcd; build_k8s ;;
	k8s) build_k8s ;;
	etcd) build_etcd ;;
	helm) build_helm ;;
	kubeconform) build_kubeconform ;;
	spire) build_spire ;;
	spire-agent) build_spire_agent ;;
	*) echo "unknown component: $what" >&2; exit 2 ;;
	esac
done
