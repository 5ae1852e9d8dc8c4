"""Authorization: decide from policy + extracted identity + route (pure; returns a typed Decision)."""

from __future__ import annotations

from dataclasses import dataclass, field

from keyrelay_common.identity import KEY_ID_LENGTH, key_digest  # noqa: F401 - re-exported

from .extract import Extracted, RequestHeaders, extract_key
from .policy import Policy

PASSTHROUGH = "passthrough"
FALLBACK = "fallback"

# reason -> (HTTP status, Anthropic error type)
DENIALS = {
    "malformed_key": (400, "invalid_request_error"),
    "conflicting_keys": (400, "invalid_request_error"),
    "key_format": (400, "invalid_request_error"),
    "missing_key": (401, "authentication_error"),
    "revoked": (403, "permission_error"),
    "not_allowlisted": (403, "permission_error"),
    "internal_error": (500, "api_error"),
    # budgets (ext_authz/budgets.py): answered with retry-after
    "budget_requests_per_minute": (429, "rate_limit_error"),
    "budget_tokens_per_minute": (429, "rate_limit_error"),
    "budget_tokens_per_day": (429, "rate_limit_error"),
    "budget_concurrent_requests": (429, "rate_limit_error"),
    "budget_unavailable": (503, "api_error"),
}
BUDGET_MESSAGES = {
    "budget_requests_per_minute": "request budget per minute exhausted",
    "budget_tokens_per_minute": "token budget per minute exhausted",
    "budget_tokens_per_day": "token budget per day exhausted",
    "budget_concurrent_requests": "too many requests in flight",
    "budget_unavailable": "the budget store is unreachable and this budget fails closed",
}
# Allow reasons: passthrough (key forwarded), no_key (fallback, key not required), passthrough_off (key
# validated, static key used upstream).


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    route: str
    status: int = 200
    error_type: str = ""
    message: str = ""
    credential: str = ""   # passthrough | fallback (allowed only)
    key_id: str = ""
    tenant: str = ""
    # The key to forward as Authorization: Bearer (passthrough only). Never logged, never in repr.
    forward_key: str | None = field(default=None, repr=False)
    retry_after: int = 0  # seconds, sent as retry-after on a denial (budgets)


def deny(reason: str, route: str, message: str, key_id: str = "") -> Decision:
    status, error_type = DENIALS[reason]
    return Decision(False, reason, route, status, error_type, message, key_id=key_id)


def decide(policy: Policy, route: str, headers: RequestHeaders) -> Decision:
    rp = policy.for_route(route)
    found: Extracted = extract_key(headers, rp)
    if found.reason:
        return deny(found.reason, route, found.message)
    key = found.key
    if key is None:
        if rp.require_key:
            return deny("missing_key", route, "missing API key: send it as x-api-key or Authorization: Bearer")
        return Decision(True, "no_key", route, credential=FALLBACK)
    digest = key_digest(key)
    key_id = digest[:KEY_ID_LENGTH]
    if rp.key_format is not None and rp.key_format.fullmatch(key) is None:
        return deny("key_format", route, "the API key does not have the expected format", key_id)
    if digest in policy.revoked:
        return deny("revoked", route, "this API key has been revoked", key_id)
    tenant = ""
    if policy.allowlist is not None:
        tenant = policy.allowlist.get(digest)
        if tenant is None:
            return deny("not_allowlisted", route, "this API key is not allowed to use this service", key_id)
    if rp.passthrough:
        return Decision(True, "passthrough", route, credential=PASSTHROUGH, key_id=key_id, tenant=tenant,
                        forward_key=key)
    return Decision(True, "passthrough_off", route, credential=FALLBACK, key_id=key_id, tenant=tenant)


def budget_denial(allowed: Decision, reason: str, retry_after: int) -> Decision:
    """The denial of an otherwise allowed request whose budget is spent (or whose budget store is down)."""
    status, error_type = DENIALS[reason]
    scope = f"tenant {allowed.tenant}" if allowed.tenant else "this API key"
    return Decision(False, reason, allowed.route, status, error_type,
                    f"{BUDGET_MESSAGES[reason]} for {scope}; retry after {retry_after} s", key_id=allowed.key_id,
                    tenant=allowed.tenant, retry_after=retry_after)


def internal_error(route: str) -> Decision:
    return deny("internal_error", route, "the authorization service failed; the request was not forwarded")
