# EdgeFleet: `make run` to try it, `make test` to check it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
SIM_DEVICES ?= 5
SIM_ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint fmt venv clean messages locale benchmark-compression \
	cli-wheel agent-wheel screenshots

# `make venv` also builds the translation catalogs (.mo) from the committed .po.
venv: $(VENV)/.installed
	@$(PY) -c 'from fleet.translations import compile_catalogs; compile_catalogs()'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

locale: venv

run: venv
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py bootstrap
	$(PY) manage.py seed_demo --with-job
	@echo ""
	@echo "  EdgeFleet is running at http://$(HOST):$(PORT)/   (Ctrl-C stops web, worker, devices)"
	@echo "  $(SIM_DEVICES) simulated devices in group 'demo' (SIM_DEVICES=0 make run: none)"
	@echo ""
	@TOKEN=""; if [ "$(SIM_DEVICES)" -gt 0 ]; then TOKEN=$$($(PY) manage.py demo_enrollment_token) || exit 1; fi; \
	  DEBUG=$${DEBUG:-1} exec $(PY) -m fleet.devrun --host $(HOST) --port $(PORT) \
	      --devices $(SIM_DEVICES) --token "$$TOKEN" -- $(SIM_ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Full-page PNGs of home, job, deployment and device pages in en and zh-Hans in
# SHOTS_DIR, from a fresh `make run` in a temp dir (tests/browser/screenshots.py; --url
# for a running one). Not part of `make test`.
SHOTS_DIR ?= /tmp/shots
screenshots: venv
	$(PY) -m tests.browser.screenshots --out $(SHOTS_DIR)

messages: venv
	$(PY) manage.py makemessages -l zh_Hans --ignore '.venv/*' --ignore 'var/*'
	$(PY) manage.py compile_locale --force

benchmark-compression: venv
	nice -n 10 $(PY) -m benchmarks.engine

# The `edgefleet` CLI as its own wheel (no dependencies), built from a copy of fleet/cli
# so the checkout stays clean: dist/edgefleet_cli-*.whl
cli-wheel: venv
	@tmp=$$(mktemp -d) && cp -r fleet/cli $$tmp/src && rm -rf $$tmp/src/__pycache__ && \
	  $(PY) -m pip wheel -q --no-deps -w dist $$tmp/src; \
	  status=$$?; rm -rf $$tmp; exit $$status
	@ls dist/edgefleet_cli-*.whl

# The device agent as its own wheel (onnxruntime, numpy, cryptography; [mqtt] extra),
# built from a copy of devices/agent: dist/edgefleet_agent-*.whl
agent-wheel: venv
	@tmp=$$(mktemp -d) && cp -r devices/agent $$tmp/src && rm -rf $$tmp/src/__pycache__ && \
	  $(PY) -m pip wheel -q --no-deps -w dist $$tmp/src; \
	  status=$$?; rm -rf $$tmp; exit $$status
	@ls dist/edgefleet_agent-*.whl

clean:
	rm -rf var .pytest_cache .ruff_cache
