# wimsey-operator (issue 4): CRD YAML generated from the Rust types, and control-plane tests.

CRDS_DIR := crds

.PHONY: generate-crds verify-crds test-operator-cp

generate-crds: ## write crds/*.yaml from the operator's CRD types
	$(CARGO) run -q -p wimsey-operator -- crd --out-dir $(CRDS_DIR)

# Regenerates into a scratch directory and compares, so a dirty tree is never touched.
verify-crds:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(CARGO) run -q -p wimsey-operator -- crd --out-dir "$$tmp" 2>/dev/null; \
	if ! diff -ru $(CRDS_DIR) "$$tmp"; then echo "crds/ is stale: run 'make generate'" >&2; exit 1; fi

VERIFY_TARGETS += verify-crds
