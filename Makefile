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

# The LiteLLM proxy server the bench compares with, in its own virtualenv: `litellm[proxy]` resolves to another
# litellm version than the project's (the proxy extra pins its own companion package), which must not change
# what the translator and its tests run with.
LITELLM_PROXY_VENV ?= .venv-litellm-proxy
$(LITELLM_PROXY_VENV)/bin/litellm:
	@echo "==> installing litellm[proxy] into $(LITELLM_PROXY_VENV)"
	$(PYTHON) -m venv $(LITELLM_PROXY_VENV)
	$(LITELLM_PROXY_VENV)/bin/python -m pip --disable-pip-version-check -q install 'litellm[proxy]'

# Benchmark (docs/bench.md): needs wrk, installed from Debian when running as root. ARGS=--quick for a short run.
bench: $(VENV)/.test $(LITELLM_PROXY_VENV)/bin/litellm
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing wrk (apt-get)"; (apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk)) >/dev/null; \
	  else \
	    echo "make bench needs wrk: run 'sudo apt-get install -y wrk' (Debian/Ubuntu) or 'brew install wrk', then retry" >&2; exit 1; \
	  fi; }
	LITELLM_PROXY_BIN=$(LITELLM_PROXY_VENV)/bin/litellm $(PY) -m bench $(ARGS)

# Regenerate the committed gRPC/protobuf code from protos/ (tests fail when it drifts).
protos: $(VENV)/.test
	$(PY) -m ext_authz.protogen

clean:
	rm -rf $(VENV) $(LITELLM_PROXY_VENV) .pytest_cache build *.egg-info
