"""Route names: which policy route a Check is judged under (pure).

The standalone envoy.yaml names the route of every checked request through the per-route context extension
`keyrelay_route`. Istio's CUSTOM authorization action sends no context extensions, so there the route is
derived from the request path with the same table envoy.yaml's routes use; a policy's `routes:` overrides then
mean the same on both layouts. `PATH_ROUTES` is that table, in envoy.yaml's order (first match wins);
tests/ext_authz/test_routes.py parses envoy.yaml and asserts that its checked routes are exactly these.
"""

from __future__ import annotations

DEFAULT_ROUTE = "default"
ROUTE_EXTENSION = "keyrelay_route"

# (Envoy match kind, value, route name). `path`: the path without its query string equals the value;
# `path_separated_prefix`: the path is the value or continues with "/" (Envoy's semantics). Anything else is
# the `default` route (envoy.yaml's final `prefix: /`).
PATH_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("path", "/v1/messages/count_tokens", "count_tokens"),
    ("path", "/v1/messages", "messages"),
    ("path_separated_prefix", "/v1/models", "models"),
    ("path", "/", "root"),
    ("path", "/healthz", "health"),
    ("path", "/readyz", "health"),
)

# Every route name a Check can carry (metrics label these by name; anything else is "other").
KNOWN_ROUTES: tuple[str, ...] = tuple(dict.fromkeys([name for _, _, name in PATH_ROUTES] + [DEFAULT_ROUTE]))

_EXACT = {value: name for kind, value, name in PATH_ROUTES if kind == "path"}
_SEPARATED = tuple((value, name) for kind, value, name in PATH_ROUTES if kind == "path_separated_prefix")


def route_for_path(path: str) -> str:
    """The route envoy.yaml would pick for `path` (as Envoy forwards it: normalized, query string kept)."""
    path = path.partition("?")[0].partition("#")[0]
    # Exact paths and separated prefixes never overlap in the table, so the exact lookup can go first.
    name = _EXACT.get(path)
    if name is not None:
        return name
    for prefix, name in _SEPARATED:
        if path == prefix or path.startswith(prefix + "/"):
            return name
    return DEFAULT_ROUTE


def route_of(context_extensions, http) -> str:
    """The route Envoy named for this Check, else the one the path of `http` (AttributeContext.HttpRequest) maps
    to (Istio sends no extensions). The path is read only when needed: this runs on every check."""
    return context_extensions.get(ROUTE_EXTENSION) or route_for_path(http.path)
