# wimsey-operator (issue 4): CRD YAML generated from the Rust types, and control-plane tests.

CRDS_DIR := crds

.PHONY: generate-crds verify-crds test-operator-cp

generate-crds: ## write crds/*.yaml and docs/crd-reference.md from the operator's CRD types
	$(CARGO) run -q -p wimsey-operator -- crd --out-dir $(CRDS_DIR) --reference docs/crd-reference.md

# Regenerates into a scratch directory and compares, so a dirty tree is never touched.
verify-crds:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp" "$$tmp.log" "$$tmp.md"' EXIT; \
	if ! $(CARGO) run -q -p wimsey-operator -- crd --out-dir "$$tmp" --reference "$$tmp.md" >"$$tmp.log" 2>&1; then cat "$$tmp.log" >&2; exit 1; fi; \
	if ! diff -ru $(CRDS_DIR) "$$tmp"; then echo "crds/ is stale: run 'make generate'" >&2; exit 1; fi; \
	if ! diff -u docs/crd-reference.md "$$tmp.md"; then echo "docs/crd-reference.md is stale: run 'make generate'" >&2; exit 1; fi

VERIFY_TARGETS += verify-crds

# The CRDs against a real API server: install, Established, SCM samples accepted, invalid ones
# rejected by CEL. Brings a cluster up if none is; fails (never skips) without one.
test-operator-cp: spire-server
	@$(CLUSTER_SH) status >/dev/null 2>&1 || $(MAKE) --no-print-directory cluster-up
	KUBECONFIG=$(CLUSTER_KUBECONFIG) WIMSEY_SPIRE_SERVER=$(SPIRE_SERVER) $(CARGO) test -p wimsey-operator --test control_plane -- --show-output
	KUBECONFIG=$(CLUSTER_KUBECONFIG) $(CARGO) test -p wimsey-kind-tests --test node_api_on_api_server -- --show-output

TEST_TARGETS += test-operator-cp

.PHONY: bench-operator
# The reconciler on an in-process synthetic cluster (10k and 50k pods, 500 namespaces, five
# ClusterSPIFFEIDs): initial render, pod update p50/p99, ClusterSPIFFEID change, MiB per 10k pods.
bench-operator: ## operator reconciler: render times and memory vs targets, built --release
	$(CARGO) bench -p wimsey-operator --bench reconcile

.PHONY: bench-operator-idle
# Needs the cluster that `make cluster-up` brings up, with the CRDs applied; runs the operator on
# this host through a request-counting proxy for IDLE_SECONDS (default 300).
bench-operator-idle: ## an idle operator on the running cluster: CPU time and API requests over 5 minutes
	$(CARGO) build --release -p wimsey-operator --bin wimsey-operator
	operator/benches/idle.sh
