# Two entry points for a fresh machine: `make run` (the local stack) and `make test` (the whole suite).
# Each creates .venv and installs what it needs into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: run test bench image-check protos venv clean

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

# ARGS=--with-redis also starts redis-server (budget counters), installed from Debian when running as root.
run: $(VENV)/.stack
	$(if $(findstring --with-redis,$(ARGS)),$(call debian_tool,redis-server,redis-server,--with-redis needs redis-server: run 'sudo apt-get install -y redis-server' then retry,exit 1))
	$(VENV)/bin/keyrelay-stack $(ARGS)

# $(call debian_tool,COMMAND,PACKAGE,MESSAGE,ON_FAILURE): install PACKAGE from Debian when COMMAND is missing and
# this runs as root with apt-get; otherwise (or when that fails) print MESSAGE and run ON_FAILURE (`exit 1`, or
# `true` to go on).
define debian_tool
	@command -v $(1) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing $(2) (apt-get)"; (apt-get install -y -qq $(2) || (apt-get update -qq && apt-get install -y -qq $(2))) >/dev/null \
	      || { echo "$(3)" >&2; $(4); }; \
	  else \
	    echo "$(3)" >&2; $(4); \
	  fi; }
endef

# The suite includes tests/packaging (sdist + wheel build, a clean install, the Pods in a bubblewrap sandbox);
# without bubblewrap the sandbox tests are skipped with the reason, and without redis-server the budget tests.
test: $(VENV)/.test
	$(call debian_tool,bwrap,bubblewrap,bubblewrap is missing: the sandbox tests will be skipped (sudo apt-get install -y bubblewrap),true)
	$(call debian_tool,redis-server,redis-server,redis-server is missing: the budget tests will be skipped (sudo apt-get install -y redis-server),true)
	$(PY) -m pytest $(PYTEST_ARGS)

# Build the Dockerfile with buildah and run every Pod from the built image (docs/k8s.md, "The image"). Needs root
# and Debian's buildah, mmdebstrap and bubblewrap (installed with apt-get when missing); about 2-3 minutes, so not
# part of `make test`. PYTHON_IMAGE=python:3.11.13-slim-bookworm builds on the real base where a registry is
# reachable; without it the base is a stand-in made from Debian packages, kept in IMAGE_CHECK_DIR for later runs.
IMAGE_CHECK_DIR ?= /var/tmp/keyrelay-image-check
image-check: $(VENV)/.test
	$(call debian_tool,buildah,buildah,make image-check needs buildah: run 'sudo apt-get install -y buildah' then retry,exit 1)
	$(call debian_tool,bwrap,bubblewrap,make image-check needs bubblewrap: run 'sudo apt-get install -y bubblewrap' then retry,exit 1)
	$(if $(PYTHON_IMAGE),,$(call debian_tool,mmdebstrap,mmdebstrap,make image-check needs mmdebstrap for the stand-in base: run 'sudo apt-get install -y mmdebstrap' then retry,exit 1))
	KEYRELAY_IMAGE_CHECK_DIR=$(IMAGE_CHECK_DIR) $(if $(PYTHON_IMAGE),KEYRELAY_IMAGE_BASE=$(PYTHON_IMAGE)) \
	  $(PY) -m pytest tests/packaging/image_check.py -v -s -p no:cacheprovider $(PYTEST_ARGS)

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
	$(call debian_tool,wrk,wrk,make bench needs wrk: run 'sudo apt-get install -y wrk' (Debian/Ubuntu) or 'brew install wrk' then retry,exit 1)
	$(call debian_tool,redis-server,redis-server,redis-server is missing: the budgets-on authz variant will be skipped,true)
	LITELLM_PROXY_BIN=$(LITELLM_PROXY_VENV)/bin/litellm $(PY) -m bench $(ARGS)

# Regenerate the committed gRPC/protobuf code from protos/ (tests fail when it drifts).
protos: $(VENV)/.test
	$(PY) -m ext_authz.protogen

clean:
	rm -rf $(VENV) $(LITELLM_PROXY_VENV) .pytest_cache build *.egg-info
