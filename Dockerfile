# syntax=docker/dockerfile:1.7
# keyrelay: one image, two entry points (keyrelay-ext-authz, keyrelay-translator); the k8s manifests pick one
# with `command:`. One image keeps a single version and a single build/scan/sign pipeline for both services;
# the cost is that each service carries the other's dependencies (mostly LiteLLM, which ext_authz never imports).
#
#   docker build -t registry.example.com/keyrelay:0.1.0 .
#
# Stage 1 builds wheels for the project and all its dependencies; stage 2 installs them into a virtualenv on a
# slim base without compilers, pip caches or sources, and runs as an unprivileged numeric user.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ext_authz ./ext_authz
COPY translator ./translator
COPY keyrelay_stack ./keyrelay_stack
COPY keyrelay_common ./keyrelay_common
COPY keyrelay_tracing ./keyrelay_tracing
COPY keyrelay_budgets ./keyrelay_budgets
# keyrelay_stack/data/ holds symlinks to these two files (one real copy each); the wheel build dereferences them.
COPY k8s/overlays/standalone/envoy.yaml ./k8s/overlays/standalone/envoy.yaml
COPY examples/policy.yaml ./examples/policy.yaml
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HOME=/tmp \
    PATH=/opt/keyrelay/bin:$PATH
# The wheels are bind-mounted from the builder, so they never land in a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/keyrelay \
 && /opt/keyrelay/bin/pip install --no-index --find-links=/wheels keyrelay \
 && /opt/keyrelay/bin/pip uninstall --yes pip \
 && groupadd --system --gid 10001 keyrelay \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin keyrelay
# Numeric, so the kubelet can verify runAsNonRoot without resolving a name.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8082 9000 9090
# Default entry point: the translator on loopback (the manifests always say which command and address).
CMD ["keyrelay-translator"]
