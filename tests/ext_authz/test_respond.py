"""Header mutations per the contract, given Envoy's order (headers set first, then headers_to_remove)."""

from __future__ import annotations

import json

import pytest

from ext_authz.decide import Decision, deny, internal_error
from ext_authz.respond import build_response

from .helpers import ok_headers

KEY = "sk-respond-test-0123456789"


def apply_like_envoy(request_headers: dict[str, str], response) -> dict[str, str]:
    """Envoy's order for an OK response: set/overwrite `headers`, then remove `headers_to_remove`."""
    out = dict(request_headers)
    for h in response.ok_response.headers:
        out[h.header.key] = h.header.value
    for name in response.ok_response.headers_to_remove:
        out.pop(name, None)
    return out


CLIENT = {"x-api-key": KEY, "authorization": f"Bearer {KEY}", "x-authz-tenant": "forged", "x-authz-key-id": "forged",
          "x-authz-credential": "forged", "x-authz-admin": "1", "content-type": "application/json"}
FORGED = ("x-authz-tenant", "x-authz-key-id", "x-authz-credential", "x-authz-admin")


@pytest.mark.parametrize("decision,expected", [
    (Decision(True, "passthrough", "messages", credential="passthrough", key_id="k" * 16, tenant="team-a",
              forward_key=KEY),
     {"authorization": f"Bearer {KEY}", "x-authz-key-id": "k" * 16, "x-authz-tenant": "team-a",
      "x-authz-credential": "passthrough", "content-type": "application/json"}),
    (Decision(True, "passthrough", "messages", credential="passthrough", key_id="k" * 16, forward_key=KEY),
     {"authorization": f"Bearer {KEY}", "x-authz-key-id": "k" * 16, "x-authz-credential": "passthrough",
      "content-type": "application/json"}),
    (Decision(True, "no_key", "root", credential="fallback"),
     {"x-authz-credential": "fallback", "content-type": "application/json"}),
    (Decision(True, "passthrough_off", "health", credential="fallback", key_id="k" * 16),
     {"x-authz-key-id": "k" * 16, "x-authz-credential": "fallback", "content-type": "application/json"}),
], ids=["passthrough+tenant", "passthrough", "fallback-no-key", "passthrough-off"])
def test_upstream_sees_exactly_the_contract(decision: Decision, expected: dict[str, str]) -> None:
    response = build_response(decision, FORGED)
    assert apply_like_envoy(CLIENT, response) == expected
    # Nothing we set is also listed for removal (Envoy removes after setting).
    assert not set(ok_headers(response)) & set(response.ok_response.headers_to_remove)


def test_x_api_key_always_removed_even_when_absent() -> None:
    response = build_response(Decision(True, "no_key", "root", credential="fallback"), ())
    assert list(response.ok_response.headers_to_remove) == ["x-api-key", "authorization"]


@pytest.mark.parametrize("decision,status,grpc_code,error_type", [
    (deny("missing_key", "messages", "missing API key"), 401, 16, "authentication_error"),
    (deny("revoked", "messages", "revoked"), 403, 7, "permission_error"),
    (deny("not_allowlisted", "messages", "no"), 403, 7, "permission_error"),
    (deny("conflicting_keys", "messages", "differ"), 400, 3, "invalid_request_error"),
    (internal_error("messages"), 500, 13, "api_error"),
])
def test_denials(decision, status, grpc_code, error_type) -> None:
    response = build_response(decision)
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.status.code == grpc_code
    assert response.denied_response.status.code == status
    assert {h.header.key: h.header.value for h in response.denied_response.headers} == \
        {"content-type": "application/json"}
    body = json.loads(response.denied_response.body)
    assert body == {"type": "error", "error": {"type": error_type, "message": decision.message}}
