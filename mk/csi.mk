# wimsey-csi (issue 5): the CSI node plugin's image and csi-sanity against the real binary.

IMAGES += csi=wimsey-csi:wimsey-csi

# `make fuzz` (mk/core.mk): the :authority front's frame rewriter and HPACK decoder.
FUZZ_CRATES += csi-driver
FUZZ_TARGETS_csi-driver := http2_front hpack_block

# csi-sanity: v5.5.0 is the first release whose Node specs run against a node-only driver
# (csi-test#595/#597). Built once from the Go module proxy into a versioned cache dir.
CSI_SANITY_VERSION := v5.5.0
CSI_SANITY := $(WIMSEY_CACHE)/csi-sanity-$(CSI_SANITY_VERSION)/bin/csi-sanity

# Specs that cannot apply to a node-only, inline-ephemeral driver (csi-contract.md §4.3):
# - [Controller Server]: we serve no Controller service, so ControllerGetCapabilities is Unimplemented.
# - "NodeUnpublishVolume should remove target path" and "NodeGetVolumeStats should fail when volume
#   does not exist on the specified path": both create their volume with Controller CreateVolume.
# Everything else runs (or is skipped by csi-sanity itself because we advertise no such capability).
# Happy-path publish/unpublish is covered by csi-driver/tests/csi_node.rs, which sanity never reaches
# without a controller; for the same reason no --csi.testvolumeparameters file is passed (those are
# CreateVolume parameters, not inline volume attributes).
CSI_SANITY_SKIP := \[Controller Server\]|NodeUnpublishVolume should remove target path|NodeGetVolumeStats should fail when volume does not exist on the specified path

.PHONY: csi-sanity test-csi-sanity

$(CSI_SANITY):
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) $(GO) install -trimpath github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$(CSI_SANITY_VERSION)

csi-sanity: $(CSI_SANITY) ## build csi-sanity (cached by version)

# Starts wimsey-csi on a temporary socket with temporary state and mount dirs (never the kubelet's),
# runs csi-sanity against it, stops the plugin by PID and prints csi-sanity's summary line.
test-csi-sanity: $(CSI_SANITY) ## csi-sanity against the wimsey-csi binary
	$(CARGO) build -q -p wimsey-csi --bin wimsey-csi
	@tmp=$$(mktemp -d /tmp/wimsey-csi-sanity.XXXXXX); pid=; \
	trap 'if [ -n "$$pid" ]; then kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; fi; rm -rf "$$tmp"' EXIT; \
	bin=$$($(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/wimsey-csi; \
	"$$bin" --csi-socket "$$tmp/csi.sock" --registration-dir '' --node-id csi-sanity-node \
	  --state-dir "$$tmp/state" --log-format plain >"$$tmp/plugin.log" 2>&1 & pid=$$!; \
	for _ in $$(seq 100); do [ -S "$$tmp/csi.sock" ] && break; kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
	if [ ! -S "$$tmp/csi.sock" ]; then echo "wimsey-csi did not create its socket:" >&2; cat "$$tmp/plugin.log" >&2; exit 1; fi; \
	rc=0; (cd "$$tmp" && $(CSI_SANITY) --csi.endpoint="unix://$$tmp/csi.sock" \
	  --csi.mountdir="$$tmp/mount" --csi.stagingdir="$$tmp/staging" \
	  --ginkgo.skip='$(CSI_SANITY_SKIP)' --ginkgo.no-color --ginkgo.v) >"$$tmp/sanity.log" 2>&1 || rc=$$?; \
	if [ $$rc -ne 0 ]; then cat "$$tmp/sanity.log"; echo "--- wimsey-csi log" >&2; cat "$$tmp/plugin.log" >&2; fi; \
	grep -E '^(SUCCESS|FAIL)!' "$$tmp/sanity.log" | sed 's/^/csi-sanity $(CSI_SANITY_VERSION): /'; \
	exit $$rc

TEST_TARGETS += test-csi-sanity

# The node part of `make bench-csi` (the cluster part, bench-csi-cluster, is in mk/demo.mk):
# NodePublishVolume p50/p99 per mode over the real CSI socket with real mounts, and the Workload API
# of one published pod (first response on a new connection; fetches/s with 100 concurrent clients;
# FetchJWTSVID p50/p99 cached and cold).
# In process with the tests' issuer, built --release; needs root for the mounts.
.PHONY: bench-csi-node bench-csi
bench-csi-node: ## CSI node plugin: publish latency per mode, Workload API first response, fetches/s, FetchJWTSVID cached/cold
	$(CARGO) bench -p wimsey-csi --bench csi_node

bench-csi: bench-csi-node
