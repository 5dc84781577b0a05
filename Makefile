# One-command set-up and runs. `make demo` and `make test` work on a fresh Debian machine (root or sudo).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
DVC_VENV := .venv-dvc
PY := $(VENV)/bin/python
DVC := $(DVC_VENV)/bin/dvc
export DAGSTER_HOME := $(CURDIR)/.dagster_home
# dvc.yaml's stage commands call `python` (so `dvc exp run --temp/--queue` work in their copies): the project venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/$(DVC_VENV)/bin:$(PATH)
export TOKENIZERS_PARALLELISM := false
# The project pins everything itself; ignore machine-wide pip config (caps, local indexes).
export PIP_CONFIG_FILE := /dev/null
export PIP_DISABLE_PIP_VERSION_CHECK := 1
APT_PACKAGES := dataset-fashion-mnist espeak-ng flite wordnet-base fortunes chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt venv dvc-env dagster-home demo test ui repro benchmark-cpu clean help

help:
	@echo "make demo   - set up, then run the benchmark at its demo scale (Dagster job 'demo') on the embedded default data"
	@echo "make test   - set up, then run the test suite"
	@echo "make ui     - set up, then serve the Dagster UI on http://127.0.0.1:3000 with its daemon (runs launched there start)"
	@echo "make repro  - set up, then reproduce everything with DVC (dvc repro)"
	@echo "make benchmark-cpu - set up, then run the benchmark's cpu scale (Dagster job 'demo' with benchmark.scale=cpu; 3 seeds, or SEEDS='[0]': one seed 83 min on 2 cores) and copy its report to docs/results/cpu/"
	@echo "make setup  - apt packages + .venv (project) + .venv-dvc (DVC, kept apart: antlr4 conflict)"
	@echo "make clean  - remove .venv, .venv-dvc and the set-up stamps (data/, models/, reports/ stay)"
	@echo "Results: reports/benchmark.md. Docs: README.md, docs/. Every stage: .venv/bin/python -m pipeline --help"

setup: apt venv dvc-env dagster-home

# A repo-local Dagster instance, so runs persist between commands and the UI shows them; its dagster.yaml is
# assets/dagster.yaml (concurrency pools), copied again when that file changes.
dagster-home: $(DAGSTER_HOME)/dagster.yaml
# The storage is created here, once: a daemon and a webserver started together on a fresh instance race to create
# it (a duplicated alembic version row, and then the code location fails to load).
$(DAGSTER_HOME)/dagster.yaml: assets/dagster.yaml | venv
	mkdir -p $(DAGSTER_HOME)
	cp assets/dagster.yaml $@
	$(VENV)/bin/dagster instance migrate > /dev/null

# Debian packages that carry the embedded default data and the speech synthesizers; chromium for the UI's browser test.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Rebuilt only when requirements.txt or pyproject.toml change (stamp file).
venv: .setup-venv.stamp
.setup-venv.stamp: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e . --config-settings editable_mode=compat
	touch $@

dvc-env: .setup-dvc.stamp
.setup-dvc.stamp: requirements-dvc.txt
	test -x $(DVC) || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install -q -r requirements-dvc.txt
	touch $@

# Through workspace.yaml's code location (the run shows under its job in the UI), executed here and waited for.
demo: setup
	$(PY) -m assets.launch demo
	@echo "report: reports/benchmark.md and reports/benchmark.html (models under models/, data under data/)"

test: setup
	PATH=$(CURDIR)/$(VENV)/bin:$(CURDIR)/$(DVC_VENV)/bin:$$PATH $(PY) -m pytest -q

# The webserver and the daemon (the run queue: without it a run launched from the UI never starts); Ctrl-C stops both.
ui: setup
	$(VENV)/bin/dagster-daemon run -w workspace.yaml & daemon=$$!; \
	trap 'kill $$daemon 2>/dev/null || true' EXIT INT TERM; \
	$(VENV)/bin/dagster-webserver -h 127.0.0.1 -p 3000 -w workspace.yaml

repro: setup
	$(DVC) repro

# The cpu scale of the benchmark (params.yaml benchmark.scales.cpu) through the same Dagster job as `make demo`:
# -S sets benchmark.scale to cpu in params.yaml (as `dvc exp run -S` would; left so, beside the dvc.lock its stages
# record), SEEDS='[0]' runs fewer seeds than the scale's three. Two steps side by side with one thread each, as the
# demo (assets/definitions.py). The generated report, its plots and numbers and the dvc.lock that produced them
# are then copied to docs/results/cpu/ (what the repository publishes as its measured result).
CPU_RESULTS := docs/results/cpu
benchmark-cpu: setup
	$(PY) -m assets.launch demo -S benchmark.scale=cpu $(if $(SEEDS),-S 'benchmark.scales.cpu.seeds=$(SEEDS)')
	rm -rf $(CPU_RESULTS) && mkdir -p $(CPU_RESULTS)
	cp -r reports/benchmark.md reports/headline.json reports/metrics.json reports/plots dvc.lock $(CPU_RESULTS)/

clean:
	rm -rf $(VENV) $(DVC_VENV) .setup-*.stamp
