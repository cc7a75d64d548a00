# `make demo` and `make test` each do every set-up step on a fresh machine, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The demo keeps its keyring and database under var/ (git-ignored).
DEMO_ENV := PROVISION_KEYRING=$(CURDIR)/var/demo-keyring.json \
            PROVISION_DB_URL=sqlite:///$(CURDIR)/var/demo.db \
            PROVISION_OUTPUT=$(CURDIR)/output

.PHONY: demo test lint typecheck pytest clean install chromium glabels redis nginx bench bench-reconcile bench-activation

# The browser tests drive Debian's Chromium; install it when the machine lacks it.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The shared rate limit's tests start a throwaway Redis (Debian redis-server), as PostgreSQL's.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing Debian redis-server for the shared rate limit tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	mkdir -p var output
	test -f var/demo-keyring.json || $(DEMO_ENV) $(BIN)/provision keys init
	$(DEMO_ENV) $(BIN)/provision db upgrade
	$(DEMO_ENV) $(BIN)/provision run jobs/demo.toml
	$(DEMO_ENV) $(BIN)/python jobs/demo/customers.py
	rm -rf output/reconciliation-demo
	$(DEMO_ENV) $(BIN)/provision reconcile jobs/demo/shipments.csv --as-of 2026-11-28 \
	  --report-dir output/reconciliation-demo
	@echo
	@echo "Label sheets: output/$$($(BIN)/python -c 'import json; print(json.load(open("output/demo.json"))["pdf"])') (print station summary: output/demo.json)"
	@echo "Reconciliation report: output/reconciliation-demo/report.pdf"

lint: $(STAMP)
	$(BIN)/ruff check provision tests benchmarks jobs
	$(BIN)/ruff format --check provision tests benchmarks jobs

typecheck: $(STAMP)
	$(BIN)/mypy

# gLabels' template database (MIT-licensed data) for the import tests.
glabels:
	@test -d /usr/share/libglabels-3.0/templates || test -d /usr/share/glabels-3.0/templates || { \
	  echo "installing Debian glabels-data for the template import tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq glabels-data; }

# The reverse-proxy test runs Debian's nginx in front of the service.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  echo "installing Debian nginx for the reverse-proxy test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }

pytest: $(STAMP) chromium glabels redis nginx
	$(BIN)/pytest -q

test: lint typecheck pytest

# The nightly pipeline against the original approach, per stage: make bench N=100000
# (BENCH_ARGS=--sequential also times register-then-render; --help lists the rest)
bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline_bench.py --n $(or $(N),10000) $(BENCH_ARGS)

# Reconciliation at scale: 1,000,000 shipments against 1,000,000 devices (issue: <= 30 s, 2 GB).
bench-reconcile: $(STAMP)
	$(BIN)/python benchmarks/reconcile_bench.py --n $(or $(N),1000000)

# The activation service under wrk, on PostgreSQL and SQLite, beside a one-UPDATE baseline.
bench-activation: $(STAMP) redis
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python benchmarks/activation_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var output/*.pdf output/*.json output/*.png
