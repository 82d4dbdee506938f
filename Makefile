# EdgeFleet: `make run` to try it, `make test` to check it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
SIM_DEVICES ?= 5
PYTEST_ARGS ?=

.PHONY: run test lint fmt venv clean messages locale benchmark-compression

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
	@if [ "$(SIM_DEVICES)" -gt 0 ]; then TOKEN=$$($(PY) manage.py demo_enrollment_token) || exit 1; fi; \
	trap 'kill 0' INT TERM; \
	  DEBUG=$${DEBUG:-1} $(VENV)/bin/celery -A fleet worker -B -Q default,compression \
	      --concurrency 2 --loglevel INFO -s $${EDGEFLEET_VAR_DIR:-var}/celerybeat-schedule & \
	  DEBUG=$${DEBUG:-1} $(PY) manage.py runserver $(HOST):$(PORT) --noreload & \
	  if [ "$(SIM_DEVICES)" -gt 0 ]; then \
	    $(PY) -m devices.agent.simulate --server http://$(HOST):$(PORT) \
	        --enrollment-token $$TOKEN --devices $(SIM_DEVICES) --state-file $${EDGEFLEET_VAR_DIR:-var}/sim-fleet.json \
	        --uid-prefix demo --preinstalled digits-cnn:1 & \
	  fi; \
	  wait

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check fleet compression devices ota tests benchmarks || true

messages: venv
	$(PY) manage.py makemessages -l zh_Hans --ignore '.venv/*' --ignore 'var/*'
	$(PY) manage.py compile_locale --force

benchmark-compression: venv
	nice -n 10 $(PY) -m benchmarks.compression

clean:
	rm -rf var .pytest_cache .ruff_cache
