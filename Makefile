# The two commands of the README: `make demo` (main job) and `make test` (the test suite).
VENV ?= .venv
BIN := $(VENV)/bin
LAB := $(BIN)/spiderpool-lab
NODES ?= 2

.PHONY: deps demo demo-down test unit faults lint lab-build down clean-venv manifest plots

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
	$(LAB) build
	$(LAB) demo $(DEMO_FLAGS)

## demo-down: stop the demo's lab
demo-down: $(VENV)/.installed
	$(LAB) demo down

## test: lint, type-check, build the lab if needed, run the whole suite against it
# Beside the lab's tests, in a second pytest: tests/unit and tests/inproc (no lab), then the two tests
# that bring up labs of their own (the demo's, a private one; by then the shared lab is long up). The
# suite waits far more than it computes (under one core busy on average), so this saves minutes of
# wall time; the side runs niced, so that the shared lab's timing-bound tests (a Lease handover) keep
# the CPU they need. Its report is printed after; per-test times are in build/junit-*.xml.
SIDE := tests/unit tests/inproc tests/lab/test_demo.py tests/lab/test_lifecycle.py
test: deps lint lab-build
	@log=$$(mktemp); \
	mkdir -p build; \
	nice -n 10 $(BIN)/pytest -p no:cacheprovider --junitxml=build/junit-side.xml $(SIDE) > $$log 2>&1 & quick=$$!; \
	$(BIN)/pytest --junitxml=build/junit-lab.xml $(addprefix --ignore=,$(SIDE)); lab=$$?; \
	wait $$quick; fast=$$?; \
	echo "=== $(SIDE) (run beside the lab's tests) ==="; \
	if [ $$fast -ne 0 ]; then cat $$log; else tail -n 40 $$log; fi; rm -f $$log; \
	test $$lab -eq 0 -a $$fast -eq 0

## unit: the fast loop: lint, pure tests, in-process tests against a loopback apiserver (no root, no lab)
unit: lint
	$(LAB) build etcd kubernetes
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

## manifest: regenerate deploy/spiderpool.yaml from the chart (helm template with its defaults)
manifest: $(VENV)/.installed
	$(LAB) build helm
	$(BIN)/python -m spiderpool_lab.helm
