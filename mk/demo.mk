# `make demo`: a real cluster with wimsey installed from its Helm chart (config/charts/wimsey), plus the sample
# ClusterSPIFFEID and workload from config/samples; waits until the workload logs its SPIFFE ID.
# `make bench-csi-cluster` (part of `make bench-csi`): pod created -> SVID available, p50/p99.

DEMO_KUBECTL ?= $(WIMSEY_CACHE)/k8s-$(shell . kind-tests/cluster/local/versions.sh && echo $$K8S_VERSION)/bin/kubectl
DEMO_TIMEOUT ?= 180
BENCH_CSI_PODS ?= 20

.PHONY: demo demo-install bench-csi bench-csi-cluster

demo: ## bring up a cluster, install wimsey and a sample workload, print the workload's SPIFFE ID
	@$(MAKE) --no-print-directory cluster-up
	@$(MAKE) --no-print-directory demo-install
	@k="$(DEMO_KUBECTL) --kubeconfig $(CLUSTER_KUBECONFIG)"; \
	echo "[demo] waiting for the sample workload to log its SPIFFE ID"; \
	deadline=$$((SECONDS + $(DEMO_TIMEOUT))); line=""; \
	while [ $$SECONDS -lt $$deadline ]; do \
		line=$$($$k logs -n wimsey-demo deploy/spiffe-probe 2>/dev/null | grep -m1 '^x509 ' || true); \
		[ -n "$$line" ] && break; sleep 1; \
	done; \
	if [ -z "$$line" ]; then \
		echo "[demo] no SVID after $(DEMO_TIMEOUT)s; state:" >&2; \
		$$k get pods -A -o wide >&2; $$k logs -n wimsey-demo deploy/spiffe-probe --tail=20 >&2 || true; \
		$$k logs -n wimsey-system ds/wimsey-csi --tail=30 >&2 || true; exit 1; \
	fi; \
	id=$$(echo "$$line" | awk '{print $$2}'); \
	echo; echo "The sample workload (namespace wimsey-demo, go-spiffe v2) got its X.509-SVID:"; \
	echo "  $$id"; echo "  $$line"; echo; \
	echo "Look around:"; \
	echo "  export KUBECONFIG=$(CLUSTER_KUBECONFIG)"; \
	echo "  kubectl get clusterspiffeids                      # the sample ClusterSPIFFEID and its status"; \
	echo "  kubectl -n wimsey-system get pods                  # operator (2 replicas) and the CSI plugin"; \
	echo "  kubectl -n wimsey-demo logs -f deploy/spiffe-probe # each SVID the workload receives (rotation)"; \
	echo "  kubectl -n wimsey-demo exec deploy/spiffe-probe -- /spiffe-probe jwt -audience demo"; \
	echo "  kubectl -n wimsey-system get configmap wimsey-bundle -o jsonpath='{.data.bundle\.pem}'"; \
	echo "  kubectl get csidriver csi.wimsey.dev -o yaml"

# Installs the chart (CRDs included) with our images at the tag `make images` built, then
# config/samples through an overlay in target/kustomize/demo (so no tag is ever written into config/;
# kustomize takes no absolute base), and waits for the rollouts.
demo-install: helm-tools
	@k="$(DEMO_KUBECTL) --kubeconfig $(CLUSTER_KUBECONFIG)"; \
	tag=$$(cat $(WIMSEY_IMAGES_DIR)/tag); tmp=$(CURDIR)/target/kustomize/demo; mkdir -p "$$tmp"; \
	echo "[demo] helm upgrade --install wimsey config/charts/wimsey (images :$$tag)"; \
	$(HELM) --kubeconfig $(CLUSTER_KUBECONFIG) upgrade --install wimsey config/charts/wimsey \
		--namespace wimsey-system --create-namespace \
		--set-string operator.image.tag="$$tag" --set-string csi.image.tag="$$tag" >/dev/null; \
	$$k wait --for=condition=Established --timeout=60s -f crds/ >/dev/null; \
	printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' 'resources:' \
		'  - ../../../config/samples' 'images:' \
		"  - {name: localhost/wimsey/spiffe-probe, newTag: \"$$tag\"}" >"$$tmp/kustomization.yaml"; \
	echo "[demo] kubectl apply -k config/samples (images :$$tag)"; \
	$$k apply --server-side --force-conflicts -k "$$tmp"; \
	$$k -n wimsey-system rollout status deploy/wimsey-operator --timeout=$(DEMO_TIMEOUT)s; \
	$$k -n wimsey-system rollout status ds/wimsey-csi --timeout=$(DEMO_TIMEOUT)s; \
	$$k -n wimsey-demo rollout status deploy/spiffe-probe --timeout=$(DEMO_TIMEOUT)s

# The cluster part of the CSI benchmark: N pods of spiffe-probe, each timed from its create call to
# its first X.509-SVID (the client logs the time it got it; one machine, one clock).
bench-csi-cluster: ## pod created -> SVID available on the local cluster, p50/p99 (BENCH_CSI_PODS)
	@$(MAKE) --no-print-directory cluster-up
	@$(MAKE) --no-print-directory demo-install
	KUBECONFIG=$(CLUSTER_KUBECONFIG) WIMSEY_E2E=1 CLUSTER_LEVEL=$$(cat $(WIMSEY_CLUSTER_DIR)/level) \
		WIMSEY_IMAGE_TAG=$$(cat $(WIMSEY_IMAGES_DIR)/tag) BENCH_CSI_PODS=$(BENCH_CSI_PODS) \
		$(CARGO) run -q -p wimsey-kind-tests --bin wimsey-csi-bench

bench-csi: bench-csi-cluster
