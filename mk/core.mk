# wimsey-core: interop clients, benchmarks and fuzzing.

# go-spiffe checker: a small Go program of ours, built from the Go module proxy, cached by content.
GOSPIFFE_CHECK_SRC := kind-tests/clients/gospiffe-check
GOSPIFFE_CHECK_KEY := $(shell cat $(GOSPIFFE_CHECK_SRC)/go.mod $(GOSPIFFE_CHECK_SRC)/go.sum $(GOSPIFFE_CHECK_SRC)/*.go 2>/dev/null | sha256sum | cut -c1-16)
GOSPIFFE_CHECK := $(WIMSEY_CACHE)/tools/gospiffe-check-$(GOSPIFFE_CHECK_KEY)
export GOSPIFFE_CHECK

# cargo-fuzz runs on the nightly toolchain; it is installed once into the cache.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ_ROOT := $(WIMSEY_CACHE)/cargo-fuzz-$(CARGO_FUZZ_VERSION)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := spiffe_id template jws jwt_svid wit_wpt bundle_json x509_csr x509_cert service_account_token upstream_ca
# Each crate with a fuzz/ directory, and its targets as FUZZ_TARGETS_<crate dir>; other mk files
# add theirs. A crate's fuzz/seeds/<target> (if any) seeds the corpus.
FUZZ_CRATES := core
FUZZ_TARGETS_core := $(FUZZ_TARGETS)

.PHONY: gospiffe-check bench-core fuzz fuzz-build

$(GOSPIFFE_CHECK):
	mkdir -p $(dir $@)
	cd $(GOSPIFFE_CHECK_SRC) && $(GO) build -trimpath -o $@.tmp . && mv $@.tmp $@

gospiffe-check: $(GOSPIFFE_CHECK) ## build the go-spiffe interop checker (cached)

# The Rust interop tests call the checker through $GOSPIFFE_CHECK.
test-unit: $(GOSPIFFE_CHECK)

bench-core: ## core throughput: SVID issuance/validation vs raw `openssl speed ecdsap256`
	$(CARGO) bench -p wimsey-core --bench core_throughput

$(CARGO_FUZZ_ROOT)/bin/cargo-fuzz:
	$(CARGO) install --locked --root $(CARGO_FUZZ_ROOT) cargo-fuzz --version $(CARGO_FUZZ_VERSION)

fuzz-build: $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz
	for c in $(FUZZ_CRATES); do \
	  (cd $$c && PATH=$(CARGO_FUZZ_ROOT)/bin:$$PATH cargo +nightly fuzz build) || exit 1; \
	done

fuzz: fuzz-build ## run every fuzz target for FUZZ_SECONDS (default 60) each; fails on a crash
	$(foreach c,$(FUZZ_CRATES),cd $(CURDIR)/$(c) && for t in $(FUZZ_TARGETS_$(c)); do \
	  echo "== fuzz $(c) $$t ($(FUZZ_SECONDS)s)"; \
	  corpus=$(CURDIR)/$(c)/fuzz/corpus/$$t; seeds=$(CURDIR)/$(c)/fuzz/seeds/$$t; \
	  mkdir -p $$corpus; [ -d $$seeds ] || seeds=; \
	  PATH=$(CARGO_FUZZ_ROOT)/bin:$$PATH cargo +nightly fuzz run $$t $$corpus $$seeds -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done;) echo "make fuzz: no crash in $(foreach c,$(FUZZ_CRATES),$(FUZZ_TARGETS_$(c)))"
