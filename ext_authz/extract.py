"""Identity: find the caller's key in the request headers (pure; no I/O, no regex).

Envoy sends headers either as `headers` (a map; repeated headers joined with commas) or, with
`encode_raw_headers`, as `header_map` (repeated headers kept apart, values as raw bytes). Both are reduced to
a `RequestHeaders` view holding only what the policy needs: the credential headers and the names of
client-sent `x-authz-*` headers (which are always removed).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from keyrelay_common.identity import AUTHZ_PREFIX

from .policy import RoutePolicy

API_KEY = "x-api-key"
AUTHORIZATION = "authorization"
_EMPTY: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """The credential-related parts of one request's headers (values as received; never logged)."""

    api_key: tuple[str, ...] = field(default=_EMPTY, repr=False)
    authorization: tuple[str, ...] = field(default=_EMPTY, repr=False)
    authz_headers: tuple[str, ...] = _EMPTY  # names of client-sent x-authz-* headers, lower case


@dataclass(frozen=True, slots=True)
class Extracted:
    """Outcome of key extraction: a key, no key at all, or a problem (reason + client-facing message)."""

    key: str | None = field(default=None, repr=False)
    reason: str = ""   # "" when fine; otherwise "malformed_key" or "conflicting_keys"
    message: str = ""


NO_KEY = Extracted()


def headers_from_map(headers) -> RequestHeaders:
    """From AttributeContext.HttpRequest.headers (lower-cased names; repeats joined by Envoy with commas)."""
    api_key = headers.get(API_KEY)
    authorization = headers.get(AUTHORIZATION)
    authz = tuple(name for name in headers if name.startswith(AUTHZ_PREFIX))
    return RequestHeaders(
        api_key=_EMPTY if api_key is None else (api_key,),
        authorization=_EMPTY if authorization is None else (authorization,),
        authz_headers=authz,
    )


def headers_from_header_map(entries) -> RequestHeaders:
    """From AttributeContext.HttpRequest.header_map (repeated keys kept apart; `raw_value` bytes or `value`)."""
    api_key: list[str] = []
    authorization: list[str] = []
    authz: list[str] = []
    for entry in entries:
        name = entry.key.lower()
        if name == API_KEY:
            api_key.append(_text(entry))
        elif name == AUTHORIZATION:
            authorization.append(_text(entry))
        elif name.startswith(AUTHZ_PREFIX) and name not in authz:
            authz.append(name)
    return RequestHeaders(tuple(api_key), tuple(authorization), tuple(authz))


def _text(entry) -> str:
    raw = entry.raw_value
    if raw:
        # surrogateescape keeps invalid UTF-8 visible as non-ASCII, which key validation then rejects.
        return raw.decode("utf-8", "surrogateescape")
    return entry.value


def key_problem(key: str, max_length: int) -> str:
    """Why `key` cannot be a key ("" when it can). Never includes the key."""
    if not key:
        return "is empty"
    if len(key) > max_length:
        return f"is longer than {max_length} characters"
    if not key.isascii():
        return "contains non-ASCII characters"
    if not key.isprintable():
        return "contains control characters"
    if "," in key:
        return "contains a comma (was the header sent more than once?)"
    if " " in key:
        return "contains whitespace"
    return ""


def _malformed(message: str) -> Extracted:
    return Extracted(reason="malformed_key", message=message)


def extract_key(headers: RequestHeaders, route: RoutePolicy) -> Extracted:
    """Read the key from the sources the route's policy names, in its order."""
    found: list[str] = []
    for source in route.key_sources:
        if source == API_KEY:
            values = headers.api_key
            label = "x-api-key header"
        else:
            values = headers.authorization
            label = "Authorization header"
        if not values:
            continue
        if len(values) > 1:
            return _malformed(f"the {label} was sent more than once; send exactly one key")
        raw = values[0]
        # Bound the work on hostile input before any other processing.
        if len(raw) > route.max_key_length + 16:
            return _malformed(f"the {label} is longer than {route.max_key_length} characters")
        if source == API_KEY:
            key = raw.strip(" \t")
        else:
            scheme, _, rest = raw.strip(" \t").partition(" ")
            if scheme.lower() != "bearer":
                return _malformed("the Authorization header must use the Bearer scheme: "
                                  "Authorization: Bearer <key>")
            key = rest.strip(" ")
            label = "Bearer token"
        problem = key_problem(key, route.max_key_length)
        if problem:
            return _malformed(f"the {label} {problem}")
        found.append(key)
    if not found:
        return NO_KEY
    if len(found) > 1:
        # Constant-time: the comparison involves secrets.
        if route.conflicting_keys == "reject" and not hmac.compare_digest(found[0].encode(), found[1].encode()):
            return Extracted(reason="conflicting_keys",
                             message="x-api-key and Authorization: Bearer carry different keys; send one key")
    return Extracted(key=found[0])
