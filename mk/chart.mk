# The Helm chart (config/charts/wimsey) is the one source of truth for the manifests. `make generate`
# copies the generated CRDs into it, renders config/default from it with the default values and
# writes the values reference of docs/install.md; `make verify` fails when any of them has drifted,
# and lints the chart with every values file of its matrix (config/charts/wimsey/ci/). `make
# test-chart` checks every render of the matrix with kubeconform -strict against schemas made from
# the running cluster's own OpenAPI document.

CHART := config/charts/wimsey
CHART_MATRIX := $(sort $(wildcard $(CHART)/ci/*.yaml))
HELM_VERSION := $(shell . kind-tests/cluster/local/versions.sh && echo $$HELM_VERSION)
KUBECONFORM_VERSION := $(shell . kind-tests/cluster/local/versions.sh && echo $$KUBECONFORM_VERSION)
K8S_VERSION := $(shell . kind-tests/cluster/local/versions.sh && echo $$K8S_VERSION)
HELM ?= $(WIMSEY_CACHE)/helm-$(HELM_VERSION)/bin/helm
KUBECONFORM ?= $(WIMSEY_CACHE)/kubeconform-$(KUBECONFORM_VERSION)/bin/kubeconform
export HELM
# What config/default is rendered with: the release name and namespace the docs use, the CRDs
# left to crds/ (applied first, on their own).
# (`--kube-version`: helm built from source assumes Kubernetes v1.20, which the chart refuses.)
CHART_RENDER = $(HELM) template wimsey $(CHART) --namespace wimsey-system --kube-version $(K8S_VERSION) --set crds.enabled=false
# docs/install.md's values reference, from values.schema.json and values.yaml
VALUES_DOC = $(CARGO) run -q -p wimsey-kind-tests --bin wimsey-values-doc --
DEFAULT_RENDER_HEADER := \# Generated from config/charts/wimsey by `make generate` (helm template, default values, CRDs in crds/); do not edit.

.PHONY: helm-tools generate-chart verify-chart lint-chart test-chart

helm-tools:
	@kind-tests/cluster/local/build.sh helm kubeconform

generate-chart: helm-tools generate-crds
	rm -f $(CHART)/files/crds/*.yaml
	cp $(CRDS_DIR)/*.yaml $(CHART)/files/crds/
	{ echo '$(DEFAULT_RENDER_HEADER)'; $(CHART_RENDER); } >config/default/wimsey.yaml
	$(VALUES_DOC) $(CHART)/values.schema.json $(CHART)/values.yaml docs/install.md

generate: generate-chart

verify-chart: helm-tools lint-chart
	@if ! diff -ru $(CRDS_DIR) $(CHART)/files/crds; then echo "$(CHART)/files/crds differs from crds/: run 'make generate'" >&2; exit 1; fi
	@tmp=$$(mktemp); trap 'rm -f "$$tmp"' EXIT; \
	{ echo '$(DEFAULT_RENDER_HEADER)'; $(CHART_RENDER); } >"$$tmp"; \
	if ! diff -u config/default/wimsey.yaml "$$tmp"; then echo "config/default is stale: run 'make generate'" >&2; exit 1; fi
	$(VALUES_DOC) $(CHART)/values.schema.json $(CHART)/values.yaml docs/install.md --check

lint-chart:
	$(HELM) lint --strict $(CHART)
	@for values in $(CHART_MATRIX); do echo "helm lint --strict -f $$values"; $(HELM) lint --quiet --strict $(CHART) -f "$$values" || exit 1; done
	@# a misspelt key or a wrong type is refused by values.schema.json
	@if out=$$($(HELM) template $(CHART) --kube-version $(K8S_VERSION) --set operator.replica=3 2>&1); then echo "a misspelt value was accepted" >&2; exit 1; \
		else grep -q "additional properties 'replica' not allowed" <<<"$$out" || { echo "$$out" >&2; exit 1; }; fi

VERIFY_TARGETS += verify-chart

# kubeconform needs the cluster (for its OpenAPI document): the schemas are cached per server version
# (and per revision of wimsey-kube-schemas, KUBE_SCHEMAS_REV).
KUBE_SCHEMAS_REV := 2
test-chart: helm-tools
	@$(CLUSTER_SH) status >/dev/null 2>&1 || $(MAKE) --no-print-directory cluster-up
	@k="$(DEMO_KUBECTL) --kubeconfig $(CLUSTER_KUBECONFIG)"; \
	version=$$($$k version -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | tail -1); \
	schemas=$(WIMSEY_CACHE)/kube-schemas-$$version-r$(KUBE_SCHEMAS_REV); \
	if [ ! -f "$$schemas/.done" ]; then \
		tmp=$$(mktemp); trap 'rm -f "$$tmp"' EXIT; \
		$$k get --raw /openapi/v2 >"$$tmp"; \
		rm -rf "$$schemas"; $(CARGO) run -q -p wimsey-kind-tests --bin wimsey-kube-schemas -- "$$tmp" "$$schemas"; \
		touch "$$schemas/.done"; fi; \
	for values in "" $(CHART_MATRIX); do \
		echo "kubeconform -strict (Kubernetes $$version): helm template $${values:+-f $$values}"; \
		$(HELM) template wimsey $(CHART) --namespace wimsey-system --kube-version $$version $${values:+-f "$$values"} | \
		$(KUBECONFORM) -strict -summary -skip ServiceMonitor,PodMonitor \
			-schema-location "$$schemas/{{ .ResourceKind }}_{{ .Group }}_{{ .ResourceAPIVersion }}.json" - || exit 1; \
	done; \
	echo "kubeconform -strict refuses a misspelt field (env[].valu)"; \
	if $(HELM) template wimsey $(CHART) --namespace wimsey-system --kube-version $$version \
		--set-json 'operator.extraEnv=[{"name":"X","valu":"y"}]' | \
		$(KUBECONFORM) -strict -summary \
			-schema-location "$$schemas/{{ .ResourceKind }}_{{ .Group }}_{{ .ResourceAPIVersion }}.json" -; then \
		echo "kubeconform accepted an unknown field: its schemas are not strict" >&2; exit 1; fi

TEST_TARGETS += test-chart
