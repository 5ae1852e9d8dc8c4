"""One route table for both layouts: envoy.yaml names the route through context_extensions, Istio's CUSTOM action
sends none and ext_authz derives it from the path (ext_authz/routes.py). The table is checked against the routes of
the committed envoy.yaml, and every route override of a policy is run both ways over real gRPC."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ext_authz.routes import DEFAULT_ROUTE, KNOWN_ROUTES, PATH_ROUTES, ROUTE_EXTENSION, route_for_path
from keyrelay_stack.envoy_config import ENVOY_YAML

from .helpers import Service, check_request, metadata, running_service

EXT_AUTHZ = "envoy.filters.http.ext_authz"


def _envoy_checked_routes() -> list[tuple[str, str, str]]:
    """(match kind, value, keyrelay_route) of every envoy.yaml route that is checked, in order."""
    config = yaml.safe_load(ENVOY_YAML.read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    out = []
    for route in vhost["routes"]:
        per_route = route.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {})
        if per_route.get("disabled"):
            continue  # answered by Envoy itself (413, blocked /metrics): no check, no policy route
        name = per_route["check_settings"]["context_extensions"][ROUTE_EXTENSION]
        assert route["name"] == name, route
        match = dict(route["match"])
        assert not match.pop("headers", None) and not match.pop("case_sensitive", None), route
        ((kind, value),) = match.items()
        out.append((kind, value, name))
    return out


def test_the_table_is_envoy_yamls_routes() -> None:
    routes = _envoy_checked_routes()
    assert routes[-1] == ("prefix", "/", DEFAULT_ROUTE)  # the catch-all comes last
    assert tuple(routes[:-1]) == PATH_ROUTES
    assert set(KNOWN_ROUTES) == {name for _, _, name in routes}


@pytest.mark.parametrize("path,route", [
    ("/v1/messages", "messages"),
    ("/v1/messages?beta=true", "messages"),
    ("/v1/messages/count_tokens", "count_tokens"),
    ("/v1/messages/count_tokens?beta=true", "count_tokens"),
    ("/v1/models", "models"),
    ("/v1/models?limit=5", "models"),
    ("/v1/models/claude-sonnet-4-5", "models"),
    ("/v1/models/openai/gpt-4o", "models"),
    ("/v1/modelsx", DEFAULT_ROUTE),   # path_separated_prefix: the prefix must end at a "/"
    ("/", "root"),
    ("/?x=1", "root"),
    ("/healthz", "health"),
    ("/readyz", "health"),
    ("/v1/messages/", DEFAULT_ROUTE),
    ("/V1/messages", DEFAULT_ROUTE),   # Envoy matches paths case-sensitively
    ("/v1/complete", DEFAULT_ROUTE),
    ("/metrics", DEFAULT_ROUTE),
    ("", DEFAULT_ROUTE),
])
def test_route_for_path(path: str, route: str) -> None:
    assert route_for_path(path) == route


# One key per route, and a policy in which each route accepts only its own key's format: a request is allowed
# exactly when the key belongs to the route the request is judged under.
ROUTE_KEYS = {name: f"sk-{name.replace('_', '')}-0123456789" for name in KNOWN_ROUTES}
PATH_OF = {"messages": "/v1/messages?beta=true", "count_tokens": "/v1/messages/count_tokens",
           "models": "/v1/models/claude-sonnet-4-5", "root": "/", "health": "/readyz", DEFAULT_ROUTE: "/v1/complete"}


def _policy() -> str:
    lines = ["version: 1", "require_key: true", f"key_format: '^sk-{DEFAULT_ROUTE}-[0-9]+$'", "routes:"]
    for name in KNOWN_ROUTES:
        if name != DEFAULT_ROUTE:
            lines.append(f"  {name}: {{key_format: '^sk-{name.replace('_', '')}-[0-9]+$'}}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Service:
    path = tmp_path_factory.mktemp("routes") / "policy.yaml"
    path.write_text(_policy())
    with running_service(path) as svc:
        yield svc


def _check(svc: Service, key: str, path: str, route: str | None):
    req = check_request({"x-api-key": key}, route=route)
    req.attributes.request.http.path = path
    return svc.stub.Check(req, timeout=10)


def test_paths_cover_every_route() -> None:
    assert {route_for_path(p) for p in PATH_OF.values()} == set(KNOWN_ROUTES)
    assert all(route_for_path(p) == r for r, p in PATH_OF.items())


@pytest.mark.parametrize("route", KNOWN_ROUTES)
@pytest.mark.parametrize("key_route", KNOWN_ROUTES)
def test_every_route_override_means_the_same_both_ways(service: Service, route: str, key_route: str) -> None:
    """context_extensions (standalone Envoy) vs the path alone (Istio): same decision, same route."""
    named = _check(service, ROUTE_KEYS[key_route], PATH_OF[route], route)
    derived = _check(service, ROUTE_KEYS[key_route], PATH_OF[route], None)
    allowed = key_route == route
    for resp in (named, derived):
        assert (resp.status.code == 0) is allowed, (route, key_route)
        assert metadata(resp)["route"] == route
        if not allowed:
            assert metadata(resp)["reason"] == "key_format"
    # The extension wins over the path when Envoy names the route.
    if route != "messages":
        other = _check(service, ROUTE_KEYS[key_route], PATH_OF["messages"], route)
        assert (other.status.code == 0) is allowed and metadata(other)["route"] == route


def test_derived_routes_are_counted_by_name(service: Service) -> None:
    before = service.metric("keyrelay_ext_authz_decisions_total", route="count_tokens")
    _check(service, ROUTE_KEYS["count_tokens"], "/v1/messages/count_tokens", None)
    assert service.metric("keyrelay_ext_authz_decisions_total", route="count_tokens") == before + 1
