# Two entry points for a fresh machine: `make run` (the local stack) and `make test` (the whole suite).
# Each creates .venv and installs what it needs into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: run test bench protos venv clean

$(VENV)/bin/python:
	@echo "==> creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.stack: $(VENV)/bin/python pyproject.toml
	@echo "==> installing keyrelay[stack] into $(VENV)"
	$(PIP) install -e '.[stack]'
	@touch $@

$(VENV)/.test: $(VENV)/bin/python pyproject.toml
	@echo "==> installing keyrelay[test] into $(VENV)"
	$(PIP) install -e '.[test,bench]'
	@touch $@ $(VENV)/.stack

venv: $(VENV)/.test

run: $(VENV)/.stack
	$(VENV)/bin/keyrelay-stack $(ARGS)

test: $(VENV)/.test
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(PY) -m bench $(ARGS)

# Regenerate the committed gRPC/protobuf code from protos/ (tests fail when it drifts).
protos: $(VENV)/.test
	$(PY) -m ext_authz.protogen

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
