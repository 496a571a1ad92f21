#!/usr/bin/env bash
# `make images`: build our binaries as static executables and pack each into an OCI image-layout tar
# with our own writer (wimsey-oci-image), then import them into the cluster that is up.
#   images.sh build   -> $WIMSEY_IMAGES_DIR/<name>.tar, $WIMSEY_IMAGES_DIR/tag
#   images.sh load    -> ctr import (local provider) or kind load image-archive (kind provider)
# The image list comes from make (IMAGES in mk/cluster.mk) as IMAGE_SPECS, one per line:
#   name|cargo package|binary|extra wimsey-oci-image flags|extra cargo flags
# and Go programs as GO_IMAGE_SPECS (GO_IMAGES in mk/cluster.mk): name|source dir|binary|extra flags,
# and prebuilt static binaries as BIN_IMAGE_SPECS (BIN_IMAGES): name|path|extra flags
# Images are named localhost/wimsey/<name>:<git short sha>[-dirty] (ours also :<that>-next).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
CARGO=${CARGO:-cargo}
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
OUT=${WIMSEY_IMAGES_DIR:-$TARGET_DIR/images}
# The static builds (their own RUSTFLAGS and --target, so they share nothing with target/) go to a
# cargo target dir in the cache outside the repo: a fresh clone on a warm machine recompiles only
# our own crates, not the release dependency tree (k8s-openapi alone takes minutes).
IMAGE_TARGET_DIR=${WIMSEY_IMAGE_TARGET_DIR:-${WIMSEY_CACHE:-/var/cache/wimsey}/cargo-target-images}
PROFILE=image
REGISTRY=localhost/wimsey
STATIC_RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols"
D=${WIMSEY_CLUSTER_DIR:-/var/lib/wimsey-cluster}
log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

image_tag() {
	local sha
	sha=$(git rev-parse --short HEAD 2>/dev/null || echo nocommit)
	if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then sha="$sha-dirty"; fi
	echo "$sha"
}

specs() { printf '%s\n' "${IMAGE_SPECS:?IMAGE_SPECS is set by make (IMAGES in mk/cluster.mk)}" | sed 's/^[[:space:]]*//; /^$/d'; }

# Cargo names our own crates by their path inside the workspace and judges them fresh by mtimes,
# so a checkout could take another checkout's build of them for its own when both share
# IMAGE_TARGET_DIR. When another checkout built there last, our crates' artifacts are removed first
# (the dependencies, the slow part, stay).
forget_other_checkouts_builds() {
	local last members
	last=$(cat "$IMAGE_TARGET_DIR/.checkout" 2>/dev/null || true)
	[ -z "$last" ] || [ "$last" = "$root" ] && return 0
	members=$("$CARGO" metadata --no-deps --format-version 1 |
		grep -o '"workspace_members":\[[^]]*\]' | grep -o '#wimsey-[a-z-]*@' | tr -d '#@' | sort -u)
	log "last image build here was from $last: rebuilding our crates"
	local args=()
	for m in $members; do args+=(-p "$m"); done
	CARGO_TARGET_DIR="$IMAGE_TARGET_DIR" "$CARGO" clean -q --profile "$PROFILE" --target "$TARGET" "${args[@]}"
}

build() {
	local tag; tag=$(image_tag)
	mkdir -p "$OUT"
	# One static cargo build per set of extra cargo flags, every package of the set at once, so the
	# dependencies they share compile once and in parallel. Our image writer rides with the
	# kind-tests group (static binaries run on the build host too).
	forget_other_checkouts_builds
	local groups
	groups=$( (specs | awk -F'|' '{ print $5 }'; echo "--no-default-features") | sort -u)
	while IFS= read -r cflags; do
		local args=()
		while IFS='|' read -r _ p b _ f; do
			[ "$f" = "$cflags" ] && args+=(-p "$p" --bin "$b")
		done < <(specs)
		[ "$cflags" = "--no-default-features" ] && args+=(-p wimsey-kind-tests --bin wimsey-oci-image)
		log "cargo build (static, profile $PROFILE) ${args[*]} $cflags"
		# shellcheck disable=SC2086
		RUSTFLAGS="$STATIC_RUSTFLAGS" CARGO_TARGET_DIR="$IMAGE_TARGET_DIR" "$CARGO" build \
			--profile "$PROFILE" --target "$TARGET" "${args[@]}" $cflags
	done <<<"$groups"
	echo "$root" >"$IMAGE_TARGET_DIR/.checkout"
	local bindir=$IMAGE_TARGET_DIR/$TARGET/$PROFILE
	local tool=$bindir/wimsey-oci-image
	rm -f "$OUT"/*.tar
	while IFS='|' read -r name pkg bin oflags _; do
		local exe=$bindir/$bin
		if command -v readelf >/dev/null && readelf -l "$exe" | grep 'Requesting program interpreter' >/dev/null; then
			echo "$exe is not static" >&2; exit 1
		fi
		# shellcheck disable=SC2086
		# also as <tag>-next: the same image under a new tag, which the chart's upgrade test rolls to
		"$tool" --out "$OUT/$name.tar" --name "$REGISTRY/$name:$tag" --name "$REGISTRY/$name:$tag-next" \
			--add "$exe:/$bin" --entrypoint "/$bin" $oflags
	done < <(specs)
	# Go programs (GO_IMAGE_SPECS, one per line: name|source dir|binary|extra wimsey-oci-image flags),
	# built static with CGO_ENABLED=0 and packed the same way.
	while IFS='|' read -r name dir bin oflags; do
		local exe=$TARGET_DIR/go-images/$bin
		log "go build (static) $dir -> $bin"
		(cd "$dir" && CGO_ENABLED=0 "${GO:-go}" build -trimpath -ldflags='-s -w' -o "$exe" .)
		# shellcheck disable=SC2086
		"$tool" --out "$OUT/$name.tar" --name "$REGISTRY/$name:$tag" --add "$exe:/$bin" --entrypoint "/$bin" $oflags
	done < <(printf '%s\n' "${GO_IMAGE_SPECS:-}" | sed 's/^[[:space:]]*//; /^$/d')
	# Upstream binaries built elsewhere (BIN_IMAGE_SPECS, one per line: name|path|extra flags), e.g.
	# the static spire-agent of build.sh; one not built yet is left out (its make target builds it).
	while IFS='|' read -r name exe oflags; do
		if [ ! -x "$exe" ]; then log "$name: $exe not built, no image"; continue; fi
		if command -v readelf >/dev/null && readelf -l "$exe" | grep 'Requesting program interpreter' >/dev/null; then
			echo "$exe is not static" >&2; exit 1
		fi
		local bin; bin=$(basename "$exe")
		# shellcheck disable=SC2086
		"$tool" --out "$OUT/$name.tar" --name "$REGISTRY/$name:$tag" --add "$exe:/$bin" --entrypoint "/$bin" $oflags
	done < <(printf '%s\n' "${BIN_IMAGE_SPECS:-}" | sed 's/^[[:space:]]*//; /^$/d')
	echo "$tag" >"$OUT/tag"
	log "images tagged $tag in $OUT"
}

load() {
	local provider tag
	provider=$(cat "$D/provider" 2>/dev/null || true)
	tag=$(cat "$OUT/tag")
	case $provider in
	local)
		. "$root/kind-tests/cluster/local/common.sh"
		if ! pid_alive containerd; then log "local cluster has no node (containerd) up: images not loaded"; return 0; fi
		for tar in "$OUT"/*.tar; do
			ctr_ images import "$tar" >/dev/null
			log "imported $(basename "$tar" .tar) ($tag) into containerd (k8s.io)"
		done ;;
	kind)
		for tar in "$OUT"/*.tar; do kind load image-archive "$tar" --name "${KIND_CLUSTER:-wimsey}"; done ;;
	*) log "no cluster up: images built, not loaded" ;;
	esac
}

case ${1:-build} in
build) build ;;
load) load ;;
tag) image_tag ;;
*) echo "usage: images.sh build|load|tag" >&2; exit 2 ;;
esac
