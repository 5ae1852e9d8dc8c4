"""Envoy bootstraps for the benchmark (rendered as JSON, which Envoy reads as YAML).

- `authz_bootstrap`: one Envoy, several listeners that all answer with the same fixed direct_response; one
  without any filter but the router, the others with the ext_authz filter pointed at one ext_authz instance each.
- The full path (Envoy + ext_authz + translator) is the project's own envoy.yaml rendered by
  `keyrelay_stack.envoy_config` with the benchmark's ports (`stack_bootstrap`).

The ext_authz filter and cluster settings are taken from the stack's rendered configuration when available
(`stack_ext_authz_settings`), so the authz listeners carry the same filter settings as envoy.yaml.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIRECT_BODY = '{"ok":true}'
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def default_ext_authz_filter(cluster: str) -> dict[str, Any]:
    """The filter as docs/interfaces.md pins it: gRPC, V3, fail closed, status_on_error 503."""
    return {
        "name": EXT_AUTHZ_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "1s"},
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
        },
    }


def default_ext_authz_cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": copy.deepcopy(H2_OPTIONS),
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


@dataclass
class ExtAuthzSettings:
    """Filter and cluster templates (cluster name and port are replaced per listener)."""

    filter: dict[str, Any]
    cluster: dict[str, Any]
    source: str  # "keyrelay_stack.envoy_config" or "bench defaults"

    def filter_for(self, cluster: str) -> dict[str, Any]:
        f = copy.deepcopy(self.filter)
        f["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster
        return f

    def cluster_for(self, name: str, port: int) -> dict[str, Any]:
        c = copy.deepcopy(self.cluster)
        c["name"] = name
        c["load_assignment"] = default_ext_authz_cluster(name, port)["load_assignment"]
        c.pop("hosts", None)
        return c


def _walk(obj: Any):
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def stack_ext_authz_settings(rendered: dict[str, Any] | None) -> ExtAuthzSettings:
    """Pull the ext_authz filter and its cluster out of the stack's rendered bootstrap (fallback: defaults)."""
    if rendered:
        filt = next((d for d in _walk(rendered) if d.get("name") == EXT_AUTHZ_FILTER and "typed_config" in d), None)
        if filt and "envoy_grpc" in filt["typed_config"].get("grpc_service", {}):
            cname = filt["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
            clusters = rendered.get("static_resources", {}).get("clusters", [])
            cluster = next((c for c in clusters if c.get("name") == cname), None)
            if cluster:
                return ExtAuthzSettings(copy.deepcopy(filt), copy.deepcopy(cluster),
                                        "envoy.yaml (keyrelay_stack.envoy_config)")
    return ExtAuthzSettings(default_ext_authz_filter("ext_authz"), default_ext_authz_cluster("ext_authz", 0),
                            "bench defaults")


def _listener(name: str, port: int, filters: list[dict], routes: list[dict]) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE, "stat_prefix": name, "codec_type": "AUTO",
                "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
                "http_filters": filters + [ROUTER],
            }}]}],
    }


def _direct_route(authz: bool) -> dict[str, Any]:
    route: dict[str, Any] = {"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": DIRECT_BODY}}}
    if authz:
        route["typed_per_filter_config"] = {EXT_AUTHZ_FILTER: {
            "@type": PER_ROUTE_TYPE, "check_settings": {"context_extensions": {"keyrelay_route": "messages"}}}}
    return route


def authz_bootstrap(*, admin_port: int, plain_port: int, authz: dict[str, tuple[int, int]],
                    settings: ExtAuthzSettings) -> dict[str, Any]:
    """`authz` maps a label to (listener port, ext_authz gRPC port)."""
    listeners = [_listener("direct_plain", plain_port, [], [_direct_route(False)])]
    clusters = []
    for label, (port, grpc_port) in authz.items():
        cname = f"ext_authz_{label}"
        listeners.append(_listener(f"direct_{label}", port, [settings.filter_for(cname)], [_direct_route(True)]))
        clusters.append(settings.cluster_for(cname, grpc_port))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def stack_bootstrap(*, admin_port: int, port: int, authz_grpc_port: int, translator_port: int,
                    access_log: bool = True) -> tuple[dict[str, Any] | None, str]:
    """The project's own envoy.yaml rendered by keyrelay_stack.envoy_config with the benchmark's ports (access
    log kept: it is part of what the product costs). Returns (None, reason) when it cannot be rendered, so the
    caller can say why."""
    try:
        from keyrelay_stack import envoy_config as stack
        config = stack.render(stack.load_source(), stack.EnvoyEndpoints(
            listen_port=port, admin_port=admin_port, ext_authz_port=authz_grpc_port,
            translator_port=translator_port, access_log=access_log))
    except Exception as exc:  # noqa: BLE001 - the stack's renderer missing or broken: fall back, say why
        return None, f"keyrelay_stack.envoy_config unusable ({exc.__class__.__name__}: {exc})"
    return config, "envoy.yaml via keyrelay_stack.envoy_config.render"


def write(config: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(config, indent=1))
    return path
