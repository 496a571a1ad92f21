# Real Kubernetes for the tests (issue 3): cluster providers, our OCI images, the e2e suite.
# Provider: kind when a kind binary and a working container engine exist, else "local" (upstream binaries
# built from the Go module proxy into $(WIMSEY_CACHE), run as background processes). See docs/testing.md.

CLUSTER_PROVIDER ?= auto
CLUSTER_LEVEL ?= node
WIMSEY_CLUSTER_DIR ?= /var/lib/wimsey-cluster
CLUSTER_KUBECONFIG ?= $(WIMSEY_CLUSTER_DIR)/kubeconfig
WIMSEY_IMAGES_DIR ?= $(CURDIR)/target/images
export CLUSTER_PROVIDER CLUSTER_LEVEL WIMSEY_CLUSTER_DIR CLUSTER_KUBECONFIG WIMSEY_IMAGES_DIR CARGO GO

# Images: name=cargo-package:binary. Each becomes localhost/wimsey/<name>:<git short sha>, one static
# binary at /<binary> as entrypoint. To ship another binary, append from your own mk file, e.g.
#   IMAGES += operator=wimsey-operator:wimsey-operator
# and optionally IMAGE_OPTS_<name> (extra wimsey-oci-image flags: --user, --env, --add SRC:DST, --name)
# and IMAGE_CARGO_FLAGS_<package> (extra cargo build flags).
IMAGES += pause=wimsey-kind-tests:wimsey-pause test-app=wimsey-kind-tests:wimsey-test-app
# the pause image doubles as containerd's sandbox image (localhost/wimsey/pause:sandbox)
IMAGE_OPTS_pause := --user 65535:65535 --name localhost/wimsey/pause:sandbox
IMAGE_OPTS_test-app := --user 65532:65532
IMAGES += operator=wimsey-operator:wimsey-operator
IMAGE_OPTS_operator := --user 65532:65532
# the image binaries build without the kube/tokio test helpers
IMAGE_CARGO_FLAGS_wimsey-kind-tests := --no-default-features

image_name = $(firstword $(subst =, ,$(1)))
image_pkg = $(firstword $(subst :, ,$(word 2,$(subst =, ,$(1)))))
image_bin = $(word 2,$(subst :, ,$(word 2,$(subst =, ,$(1)))))
define image_spec
$(call image_name,$(1))|$(call image_pkg,$(1))|$(call image_bin,$(1))|$(IMAGE_OPTS_$(call image_name,$(1)))|$(IMAGE_CARGO_FLAGS_$(call image_pkg,$(1)))

endef
export IMAGE_SPECS = $(foreach i,$(IMAGES),$(call image_spec,$(i)))

# Go programs as images: name=source-dir:binary (static, CGO_ENABLED=0), flags in IMAGE_OPTS_<name>.
GO_IMAGES += spiffe-probe=kind-tests/clients/spiffe-probe:spiffe-probe
IMAGE_OPTS_spiffe-probe := --user 65532:65532
define go_image_spec
$(call image_name,$(1))|$(call image_pkg,$(1))|$(call image_bin,$(1))|$(IMAGE_OPTS_$(call image_name,$(1)))

endef
export GO_IMAGE_SPECS = $(foreach i,$(GO_IMAGES),$(call go_image_spec,$(i)))

# Prebuilt static upstream binaries as images: name=path (e.g. spire-agent in mk/spire-stack.mk),
# flags in IMAGE_OPTS_<name>; a binary not built yet gets no image.
define bin_image_spec
$(call image_name,$(1))|$(word 2,$(subst =, ,$(1)))|$(IMAGE_OPTS_$(call image_name,$(1)))

endef
export BIN_IMAGE_SPECS = $(foreach i,$(BIN_IMAGES),$(call bin_image_spec,$(i)))

CLUSTER_SH := kind-tests/cluster/cluster.sh

.PHONY: cluster-up cluster-down cluster-status cluster-tools images images-build images-load e2e

cluster-up: ## bring up a real cluster (CLUSTER_PROVIDER=kind|local, CLUSTER_LEVEL=node|control-plane); prints KUBECONFIG
	@if [ "$(CLUSTER_LEVEL)" = node ] || [ "$$($(CLUSTER_SH) provider)" = kind ]; then $(MAKE) --no-print-directory images-build; fi
	$(CLUSTER_SH) up

cluster-down: ## tear the cluster down: processes (by pid file), containers, mounts, bridge, state
	$(CLUSTER_SH) down

cluster-status: ## show the provider, level, components and nodes of the cluster that is up
	$(CLUSTER_SH) status

cluster-tools: ## build (once per version, into WIMSEY_CACHE) etcd, kube binaries, kubectl, helm, kubeconform
	kind-tests/cluster/local/build.sh all

images: images-build images-load ## build our static binaries into OCI images (tagged with the git sha) and import them

images-build:
	kind-tests/images.sh build

images-load:
	kind-tests/images.sh load

e2e: helm-tools ## run the kind-tests suite against the cluster (brings it up or raises its level first; idempotent)
	@$(MAKE) --no-print-directory cluster-up
	KUBECONFIG=$(CLUSTER_KUBECONFIG) WIMSEY_E2E=1 CLUSTER_PROVIDER=$$($(CLUSTER_SH) provider) \
		CLUSTER_LEVEL=$$(cat $(WIMSEY_CLUSTER_DIR)/level) \
		WIMSEY_IMAGE_TAG=$$(cat $(WIMSEY_IMAGES_DIR)/tag 2>/dev/null || kind-tests/images.sh tag) \
		$(CARGO) test -p wimsey-kind-tests --test chart --test control_plane --test node --test identity --test outage --test upstream_ca -- --show-output

TEST_TARGETS += e2e

# The attack suite: hostile pods against their own socket, the node API and their files volume,
# asserting that nothing beyond the attacker's own connections is affected (kind-tests/tests/attacks.rs).
.PHONY: test-attacks
test-attacks: helm-tools ## attacks from inside pods on the node-level cluster (part of make test)
	@$(MAKE) --no-print-directory cluster-up
	KUBECONFIG=$(CLUSTER_KUBECONFIG) WIMSEY_E2E=1 CLUSTER_PROVIDER=$$($(CLUSTER_SH) provider) \
		CLUSTER_LEVEL=$$(cat $(WIMSEY_CLUSTER_DIR)/level) \
		WIMSEY_IMAGE_TAG=$$(cat $(WIMSEY_IMAGES_DIR)/tag 2>/dev/null || kind-tests/images.sh tag) \
		$(CARGO) test -p wimsey-kind-tests --test attacks --test authority_recovery -- --show-output

TEST_TARGETS += test-attacks
