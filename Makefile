# The project's task runner. `make test` is what CI runs (.ci/run).
SHELL := bash
CARGO ?= cargo
CRD := crds/fallbackconfigpolicies.fallback.kong-dp.io.yaml
CHART := charts/kong-fallback-operator

.PHONY: all test testenv lint fmt generate demo bench faults build fuzz

all: build

build:
	$(CARGO) build --workspace --all-targets

## Build (first run only) and cache the test environment: etcd, kube-apiserver, kubectl,
## MinIO, fake-gcs-server, helm, toxiproxy-server, and the checkers actionlint, promtool,
## argo-health (Argo CD's Lua VM running deploy/argocd/health.lua) and kstatus
## (sigs.k8s.io/cli-utils' status rules, as Flux applies them).
testenv:
	tools/ensure-bin all >/dev/null

## All tests: formatting, clippy, unit and integration tests against the real components.
## (Benchmarks are type-checked by clippy; they run only under `make bench`.)
test: lint testenv
	$(CARGO) test --workspace --lib --bins --tests --no-fail-fast

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate checked-in files from the code (a test fails when they drift).
generate:
	$(CARGO) run -q --bin kong-fallback-operator -- crd > $(CRD)
	cp $(CRD) $(CHART)/crds/
	tools/render-deploy > deploy/kong-fallback-operator.yaml
	tools/render-argocd-cm > deploy/argocd/argocd-cm.yaml

## The embedded demo: a local control plane and MinIO with the operator running on them.
demo: testenv
	$(CARGO) build --bin kong-fallback-operator
	$(CARGO) run -q -p kfo-testenv --bin kfo-demo

## Benchmarks: each prints `bench: <ID> key=value ...` lines. `make bench B=P1` runs one.
## P1 and P5 (export), P2 (failover), P3 (webhook latency), P4 (memory and catch-up).
bench: testenv
	$(CARGO) bench --bench export --bench election --bench webhook -- $(B)

## The fault suite in full (KFO_FAULTS=full), one scenario at a time: prints one
## `fault: <ID> key=value ...` line per scenario and case (the log: target/faults.log).
## `make test` runs the short form of the same scenarios.
faults: testenv
	@KFO_FAULTS=full $(CARGO) test --test it faults:: -- --test-threads=1 --nocapture \
	  > target/faults.log 2>&1; rc=$$?; \
	  grep -oE 'fault: R[0-9].*' target/faults.log; grep -E '^test result|panicked' target/faults.log; exit $$rc

## Fuzz the frame decoder and the storage URL parser (needs a nightly toolchain;
## installs cargo-fuzz with cargo on first use). FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in frame_decoder storage_url; do \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done
