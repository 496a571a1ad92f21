# The full SPIRE stack on the node-level cluster (kind-tests/tests/spire_stack.rs): SPIRE Server
# v$(SPIRE_VERSION) on this host (k8s_psat node attestation, SQLite), SPIRE Agent as a DaemonSet of our
# own image (a static spire-agent packed by our OCI writer), wimsey-operator with `backend: spire` on
# this host, wimsey-csi serving `mode: spire-agent` volumes, and a go-spiffe pod.

SPIRE_AGENT := $(WIMSEY_CACHE)/spire-$(SPIRE_VERSION)/bin/spire-agent
# images.sh packs it when it is built (localhost/wimsey/spire-agent:<tag>); it runs as root, as the
# SPIRE agent does upstream (hostPID: it reads the workloads' /proc/<pid>/cgroup).
BIN_IMAGES += spire-agent=$(SPIRE_AGENT)

.PHONY: spire-agent test-spire-stack

# build.sh is a no-op when the cached binary reports this version and was built without cgo.
spire-agent: ## build spire-agent (static, cached by version) for the SPIRE stack e2e
	SPIRE_VERSION=$(SPIRE_VERSION) kind-tests/cluster/local/build.sh spire-agent

# spire-agent comes first: cluster-up packs and imports the images, the agent's among them.
test-spire-stack: spire-server spire-agent helm-tools ## SPIRE Server + Agent + operator (backend spire) + CSI spire-agent mode e2e (part of make test)
	@$(MAKE) --no-print-directory cluster-up
	$(CARGO) build -q -p wimsey-operator --bin wimsey-operator
	KUBECONFIG=$(CLUSTER_KUBECONFIG) WIMSEY_E2E=1 CLUSTER_PROVIDER=$$($(CLUSTER_SH) provider) \
		CLUSTER_LEVEL=$$(cat $(WIMSEY_CLUSTER_DIR)/level) \
		WIMSEY_IMAGE_TAG=$$(cat $(WIMSEY_IMAGES_DIR)/tag 2>/dev/null || kind-tests/images.sh tag) \
		WIMSEY_SPIRE_SERVER=$(SPIRE_SERVER) \
		WIMSEY_OPERATOR_BIN=$$($(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/wimsey-operator \
		$(CARGO) test -p wimsey-kind-tests --test spire_stack -- --show-output

TEST_TARGETS += test-spire-stack
