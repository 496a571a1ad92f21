# Federation interop: a real SPIRE Server as a local process (operator/tests/support/spire.rs).
# spire-server is built once per version from the Go module proxy into $(WIMSEY_CACHE), with cgo:
# its SQL datastore's sqlite3 driver needs it.

SPIRE_VERSION ?= $(shell . kind-tests/cluster/local/versions.sh && echo $$SPIRE_VERSION)
SPIRE_SERVER := $(WIMSEY_CACHE)/spire-$(SPIRE_VERSION)/bin/spire-server
# The operator test files (test = false in operator/Cargo.toml) that need WIMSEY_SPIRE_SERVER.
SPIRE_INTEROP_TESTS := spire_harness spire_federation spire_entries spire_sync

# oidc-verify: a relying party that knows only OpenID Connect (go-oidc), for
# operator/tests/oidc_discovery.rs; built from the Go module proxy, cached by content.
OIDC_VERIFY_SRC := kind-tests/clients/oidc-verify
OIDC_VERIFY_KEY := $(shell cat $(OIDC_VERIFY_SRC)/go.mod $(OIDC_VERIFY_SRC)/go.sum $(OIDC_VERIFY_SRC)/*.go 2>/dev/null | sha256sum | cut -c1-16)
OIDC_VERIFY := $(WIMSEY_CACHE)/tools/oidc-verify-$(OIDC_VERIFY_KEY)
export OIDC_VERIFY

$(OIDC_VERIFY):
	mkdir -p $(dir $@)
	cd $(OIDC_VERIFY_SRC) && CGO_ENABLED=0 $(GO) build -trimpath -o $@.tmp . && mv $@.tmp $@

test-unit: $(OIDC_VERIFY)

.PHONY: spire-server test-spire-interop

# build.sh is a no-op when the cached binary reports this version and was built with cgo.
spire-server: ## build spire-server (cached by version) for the interop tests
	SPIRE_VERSION=$(SPIRE_VERSION) kind-tests/cluster/local/build.sh spire

test-spire-interop: spire-server ## interop tests against a real SPIRE Server (part of make test)
	WIMSEY_SPIRE_SERVER=$(SPIRE_SERVER) $(CARGO) test -p wimsey-operator \
		$(addprefix --test ,$(SPIRE_INTEROP_TESTS)) -- --show-output

TEST_TARGETS += test-spire-interop

.PHONY: bench-federation
# Our bundle endpoint and SPIRE's, same client, same run: requests/s and p50/p99 (not in make test).
bench-federation: spire-server ## bundle endpoint throughput and latency vs spire-server's, built --release
	WIMSEY_SPIRE_SERVER=$(SPIRE_SERVER) $(CARGO) bench -p wimsey-operator --bench bundle_endpoint

.PHONY: bench-spire
K8S_VERSION ?= $(shell . kind-tests/cluster/local/versions.sh && echo $$K8S_VERSION)
ETCD_VERSION ?= $(shell . kind-tests/cluster/local/versions.sh && echo $$ETCD_VERSION)
BENCH_ETCD := $(WIMSEY_CACHE)/etcd-$(ETCD_VERSION)/bin/etcd
BENCH_KUBE_APISERVER := $(WIMSEY_CACHE)/k8s-$(K8S_VERSION)/bin/kube-apiserver
# The spire backend against a real SPIRE Server (SQLite), not in make test, both --release:
# - spire_sync: the sync alone, from the in-memory store, 10k and 50k entries, beside the floor
#   of a raw BatchCreateEntry client;
# - spire_cp: the wimsey-operator binary between a private etcd + kube-apiserver of its own (the
#   cached binaries; never the shared cluster) and SPIRE, 10k and 50k realistic pods, 5
#   ClusterSPIFFEIDs. PODS=10000,50000, IDLE_SECONDS=60, SINGLES=100 change its sizes.
bench-spire: spire-server ## spire backend: convergence vs SPIRE's floor, single-pod latency, idle calls, memory
	kind-tests/cluster/local/build.sh control-plane
	WIMSEY_SPIRE_SERVER=$(SPIRE_SERVER) WIMSEY_ETCD=$(BENCH_ETCD) WIMSEY_KUBE_APISERVER=$(BENCH_KUBE_APISERVER) \
		$(CARGO) bench -p wimsey-operator --bench spire_sync --bench spire_cp

.PHONY: test-federation-e2e
# Federation with a real SPIRE Server on this host, both ways, on the node-level cluster
# (kind-tests/tests/federation.rs): the operator's bundle endpoint and poller, federated bundles in
# a go-spiffe pod, mTLS with a SPIRE-minted SVID, SPIRE's CA rotation, an unreachable endpoint.
test-federation-e2e: spire-server helm-tools ## federation e2e against a real SPIRE Server (part of make test)
	@$(MAKE) --no-print-directory cluster-up
	KUBECONFIG=$(CLUSTER_KUBECONFIG) WIMSEY_E2E=1 CLUSTER_PROVIDER=$$($(CLUSTER_SH) provider) \
		CLUSTER_LEVEL=$$(cat $(WIMSEY_CLUSTER_DIR)/level) \
		WIMSEY_IMAGE_TAG=$$(cat $(WIMSEY_IMAGES_DIR)/tag 2>/dev/null || kind-tests/images.sh tag) \
		WIMSEY_SPIRE_SERVER=$(SPIRE_SERVER) \
		$(CARGO) test -p wimsey-kind-tests --test federation -- --show-output

TEST_TARGETS += test-federation-e2e
