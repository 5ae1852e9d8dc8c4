"""Errors in the Anthropic shape, the status mapping for upstream failures, and key scrubbing.

Every non-2xx answer of the translator is `{"type":"error","error":{"type":...,"message":...}}` with
`content-type: application/json`; after a stream has started the same object travels as an `event: error`
frame. Messages never contain a key: upstream error text is scrubbed before it is quoted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Iterable, Mapping

import orjson

STATUS_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}

# Anything that looks like a credential: OpenAI/LiteLLM/Anthropic style `sk-...`, Google API keys,
# bearer tokens quoted back, AWS access key ids. Applied on top of replacing the exact keys in use.
_SECRET_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9._\-]{6,}|AIza[0-9A-Za-z_\-]{20,}|AKIA[0-9A-Z]{12,}|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,})")
_MAX_UPSTREAM_MESSAGE = 500


@dataclass
class ApiError(Exception):
    status: int
    type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    upstream: bool = False  # the failure came from the upstream (counted as an upstream error)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict:
        return error_body(self.type, self.message)


def error_body(err_type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": err_type, "message": message}}


def type_for_status(status: int) -> str:
    if status in STATUS_TYPES:
        return STATUS_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def _secret_pattern(secret: str) -> re.Pattern[str]:
    """A pattern for `secret` in every form it may come back in: any letter case, and each character as it is
    or percent-encoded (a key quoted in a URL or a form body, wholly or partly encoded; `+` for a space)."""
    parts = []
    for ch in secret:
        forms = [re.escape(ch)] + ["".join(f"%{b:02x}" for b in ch.encode("utf-8"))]
        if ch == " ":
            forms.append(r"\+")
        parts.append("(?:" + "|".join(forms) + ")")
    return re.compile("".join(parts), re.IGNORECASE)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove the given secrets (in any letter case, also URL-encoded) and anything key-shaped from text quoted
    back to a client or a log."""
    for s in secrets:
        if s and len(s) >= 4:
            text = _secret_pattern(s).sub("[redacted]", text)
    return _SECRET_PATTERNS.sub("[redacted]", text)


_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")


def valid_retry_after(value: str) -> str | None:
    """`value` when it is a valid Retry-After (delta-seconds or an HTTP-date, RFC 9110 10.2.3), else None: an
    upstream header is passed on only in a shape a client can act on (and never as text that could carry a
    key or anything else)."""
    v = value.strip()
    if _DELTA_SECONDS.fullmatch(v):
        return v
    if len(v) <= 40 and v.isascii():
        try:
            parsedate_to_datetime(v)
        except (TypeError, ValueError, IndexError):
            return None
        return v
    return None


def _is_overloaded(status: int, text: str) -> bool:
    return status == 529 or "overloaded" in text.lower()


def upstream_error(status: int, message: str, *, provider: str, headers: Mapping[str, str] | None = None,
                   secrets: Iterable[str | None] = ()) -> ApiError:
    """Map an upstream HTTP failure onto the Anthropic status and error type.

    400/422 -> 400 invalid_request_error, 401 -> 401, 403 -> 403, 404 -> 404, 413 -> 413,
    429 -> 429 rate_limit_error (retry-after passed on when it is delta-seconds or an HTTP-date), 408 -> 504,
    500/502/503/504 -> same status
    api_error, 529 or an upstream "overloaded" -> 529 overloaded_error, other 4xx -> same status
    invalid_request_error, other 5xx -> 502 api_error.
    """
    text = scrub(" ".join(str(message or "").split()), secrets)[:_MAX_UPSTREAM_MESSAGE]
    if status in (422,):
        out_status = 400
    elif status == 408:
        out_status = 504
    elif _is_overloaded(status, text) and status >= 500:
        out_status = 529
    elif status in STATUS_TYPES:
        out_status = status
    elif 400 <= status < 500:
        out_status = status
    else:
        out_status = 502
    out_headers: dict[str, str] = {}
    if headers:
        lower = {k.lower(): v for k, v in headers.items()}
        retry = valid_retry_after(str(lower.get("retry-after", "")))
        if retry is not None:
            out_headers["retry-after"] = retry
        retry_ms = str(lower.get("retry-after-ms", "")).strip()
        if _DELTA_SECONDS.fullmatch(retry_ms):
            out_headers["retry-after-ms"] = retry_ms
    detail = f": {text}" if text else ""
    return ApiError(out_status, type_for_status(out_status),
                    f"upstream {provider} returned HTTP {status}{detail}", out_headers, upstream=True)


MAX_ERROR_BODY = 64 * 1024  # how much of an upstream's error body is read for its message


def upstream_error_from_body(status: int, raw: bytes, *, provider: str, headers: Mapping[str, str] | None,
                             secrets: Iterable[str | None] = ()) -> ApiError:
    """`upstream_error` for an error answer whose body (JSON or not) is `raw`."""
    try:
        payload: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = raw
    return upstream_error(status, extract_message(payload), provider=provider, headers=headers, secrets=secrets)


def upstream_not_json(provider: str) -> ApiError:
    return ApiError(502, "api_error", f"upstream {provider} sent a non-JSON response", upstream=True)


def upstream_timeout(provider: str) -> ApiError:
    return ApiError(504, "api_error", f"upstream {provider} timed out", upstream=True)


def upstream_unreachable(provider: str) -> ApiError:
    return ApiError(502, "api_error", f"upstream {provider} is unreachable (connection failed)", upstream=True)


def upstream_broken(provider: str) -> ApiError:
    return ApiError(502, "api_error", f"upstream {provider} closed the connection mid-response", upstream=True)


def extract_message(payload: object) -> str:
    """The human-readable message of an upstream error body (OpenAI, Anthropic, Gemini shapes)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("msg") or err.get("detail")
            if msg:
                return str(msg)
        elif isinstance(err, str):
            return err
        if "detail" in payload:
            return str(payload["detail"])
        if "message" in payload:
            return str(payload["message"])
    if isinstance(payload, (bytes, bytearray)):
        return payload.decode("utf-8", "replace")
    return "" if payload is None else str(payload)
