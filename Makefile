# wimsey: the one entry point. `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Everything built from upstream (Go tools, cluster binaries) is cached here, outside the repo,
# keyed by version, so a fresh machine builds it once and a warm one reuses it.
WIMSEY_CACHE ?= /var/cache/wimsey
export WIMSEY_CACHE
CARGO ?= cargo
GO ?= go
export GOFLAGS ?= -mod=mod
export GOTOOLCHAIN ?= local

# Sub-makefiles add their own targets and append to these lists.
# `make test` checks formatting and clippy first, so CI fails on what a reviewer would flag.
TEST_TARGETS := verify test-unit
VERIFY_TARGETS := fmt-check lint

include $(sort $(wildcard mk/*.mk))

.PHONY: help build test test-unit fmt fmt-check lint generate verify bench

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build every crate (debug)
	$(CARGO) build --workspace --all-targets

test: $(TEST_TARGETS) ## everything CI runs: unit, interop, cluster tests
	@echo "make test: all test targets passed ($(TEST_TARGETS))"

test-unit: ## Rust unit and in-process tests (the cluster suites run in e2e and test-operator-cp)
	$(CARGO) test --workspace --all-targets --exclude wimsey-kind-tests
	$(CARGO) test -p wimsey-kind-tests --lib --bins

fmt: ## format the Rust code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint: ## clippy over every target, warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p wimsey-operator --test control_plane --test spire_harness --test spire_federation --test spire_entries --test spire_sync -- -D warnings
	$(CARGO) clippy -p wimsey-kind-tests --test node_api_on_api_server -- -D warnings

generate: generate-crds ## regenerate committed generated files (CRD YAML)

verify: $(VERIFY_TARGETS) ## formatting, clippy, and generated files up to date
	@echo "make verify: ok"

bench: bench-core bench-operator bench-federation bench-spire ## every benchmark
