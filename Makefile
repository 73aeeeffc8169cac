# The two commands of the README: `make demo` (main job) and `make test` (the test suite).
VENV ?= .venv
BIN := $(VENV)/bin
LAB := $(BIN)/spiderpool-lab
NODES ?= 2

.PHONY: deps demo demo-down test unit faults lint lab-build down clean-venv manifest plots image image-push chart chart-push

# The product with its dev tools, and the lab (test tooling, a package of its own: never in the product).
$(VENV)/.installed: pyproject.toml lab/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' -e ./lab
	touch $@

## deps: the system packages the lab needs (installed with apt as root, else named)
deps:
	lab/install-deps.sh

## demo: build (or reuse) the lab and run the reference walkthrough on it, step by step (DEMO_FLAGS=--teardown)
demo: deps $(VENV)/.installed
	$(LAB) build --demo
	$(LAB) demo $(DEMO_FLAGS)

## demo-down: stop the demo's lab
demo-down: $(VENV)/.installed
	$(LAB) demo down

## test: lint, type-check, build the lab if needed, run the whole suite against it
# Three pytest runs side by side; the suite waits far more than it computes, so this saves minutes of
# wall time:
# - the shared lab: the IPAM, fault and fuzz tests;
# - a second lab of its own (directory and namespace prefix, $(SECOND_LAB)): the lab, chart, API and
#   data-plane tests;
# - tests/unit and tests/inproc (no lab), then the two tests that bring up labs of their own (the
#   demo's, a private one).
# The two beside the shared lab run niced, so that its timing-bound tests (a Lease handover, the fault
# matrix's storms) keep the CPU they need. Their reports are printed after; per-test times are in
# build/junit-*.xml.
SIDE := tests/unit tests/inproc tests/lab/test_demo.py tests/lab/test_lifecycle.py
SECOND := tests/lab tests/api tests/dataplane
SECOND_LAB := lab-b
SECOND_ENV = SPIDERPOOL_LAB_PREFIX=splabb \
	SPIDERPOOL_LAB_DIR="$$($(BIN)/python -c 'from spiderpool_lab import paths; print(paths.cache_dir() / "$(SECOND_LAB)")')"
test: deps lint lab-build
	@side=$$(mktemp); second=$$(mktemp); \
	mkdir -p build; \
	nice -n 10 $(BIN)/pytest -p no:cacheprovider --junitxml=build/junit-side.xml $(SIDE) > $$side 2>&1 & quick=$$!; \
	$(SECOND_ENV) nice -n 5 $(BIN)/pytest -p no:cacheprovider --junitxml=build/junit-lab-b.xml \
		$(addprefix --ignore=,$(SIDE)) $(SECOND) > $$second 2>&1 & other=$$!; \
	$(BIN)/pytest --junitxml=build/junit-lab.xml $(addprefix --ignore=,$(SIDE) $(SECOND)); lab=$$?; \
	wait $$other; b=$$?; \
	wait $$quick; fast=$$?; \
	echo "=== $(SECOND) (on a second lab, beside the shared lab's tests) ==="; \
	if [ $$b -ne 0 ]; then cat $$second; else tail -n 40 $$second; fi; rm -f $$second; \
	echo "=== $(SIDE) (run beside the lab's tests) ==="; \
	if [ $$fast -ne 0 ]; then cat $$side; else tail -n 40 $$side; fi; rm -f $$side; \
	test $$lab -eq 0 -a $$b -eq 0 -a $$fast -eq 0

## unit: the fast loop: lint, pure tests, in-process tests against a loopback apiserver (no root, no lab)
unit: lint
	$(LAB) build etcd kubernetes helm promtool
	$(BIN)/pytest tests/unit tests/inproc

## faults: the fault matrix alone (also part of make test): one fault per pod storm, docs/reliability.md
faults: deps lint lab-build
	$(BIN)/pytest -m faults -s

lint: $(VENV)/.installed
	$(BIN)/ruff check src lab bench tests
	$(BIN)/ruff format --check src lab bench tests
	$(BIN)/mypy src lab/spiderpool_lab
	$(BIN)/lint-imports --no-cache

lab-build: $(VENV)/.installed
	$(LAB) build

## plots: redraw docs/bench/*.png from the benchmarks' JSON results in docs/bench (matplotlib, the bench extra)
plots: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/plot.py

## down: stop the lab and remove everything it created
down: $(VENV)/.installed
	$(LAB) down
	$(SECOND_ENV) $(LAB) down

## image: build the project's image spiderpool-python:<version> (buildah, podman or docker; BUILDER=... picks one)
image: $(VENV)/.installed
	$(BIN)/python -m spiderpool_lab.release image $(if $(BASE),--base $(BASE))

## image-push: push it, REGISTRY=host[:port][/path] (e.g. ghcr.io/myorg; TLS_VERIFY=false for a plain-HTTP registry)
image-push: $(VENV)/.installed
	@test -n "$(REGISTRY)" || { echo "give REGISTRY=host[:port][/path], e.g. make image-push REGISTRY=ghcr.io/myorg"; exit 2; }
	$(BIN)/python -m spiderpool_lab.release image-push $(REGISTRY) --tls-verify $(or $(TLS_VERIFY),true)

## chart: package the chart into dist/chart with its index.yaml (a static Helm repository; CHART_URL= its address)
chart: $(VENV)/.installed
	$(BIN)/python -m spiderpool_lab.release chart $(if $(CHART_URL),--url $(CHART_URL))

## chart-push: push the packaged chart to an OCI registry, OCI=oci://host[:port]/path (PLAIN_HTTP=true for a plain-HTTP one)
chart-push: $(VENV)/.installed
	@test -n "$(OCI)" || { echo "give OCI=oci://host[:port]/path, e.g. make chart-push OCI=oci://ghcr.io/myorg/charts"; exit 2; }
	$(BIN)/python -m spiderpool_lab.release chart-push $(OCI) $(if $(filter true,$(PLAIN_HTTP)),--plain-http)

## manifest: regenerate deploy/spiderpool.yaml from the chart (helm template with its defaults)
manifest: $(VENV)/.installed
	$(LAB) build helm
	$(BIN)/python -m spiderpool_lab.helm
