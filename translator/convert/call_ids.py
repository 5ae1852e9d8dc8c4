"""Tool call ids between a backend and the client, carrying what the backend needs back (pure; docs/conversion.md).

Gemini signs function calls (`thought_signature`) and wants each signature back on the same call in the next
turn. The tool_use `id` is the one field every Anthropic client must return byte for byte (in the
`tool_result` that answers the call), so it carries the signature: `client_call_id(upstream_id, signature)`
gives an id within Anthropic's pattern `^[a-zA-Z0-9_-]+$`, and `upstream_call(client_id)` gives back the
backend's own id and the signature.

- An id that already fits the pattern and has no signature passes unchanged (OpenAI, most backends).
- Otherwise the id is `kr1_` + base64url (no padding) of the compact JSON `[upstream_id]` or
  `[upstream_id, signature]`. Ids containing characters outside the pattern (LiteLLM's
  `call_..__thought__<base64>`, some gateways' ids with `.` or `:`) are wrapped the same way, so the backend
  gets exactly its own id back. An upstream id that itself starts with `kr1_` is wrapped too, so decoding is
  never ambiguous.
- `upstream_call` of an id that is not ours (or is damaged) returns it unchanged with no signature.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

__all__ = [
    "ID_PATTERN",
    "client_call_id",
    "upstream_call",
    "THOUGHT_SEPARATOR",
    "call_signature",
    "client_id_for_call",
    "signature_of",
]

ID_PATTERN = re.compile(r"[a-zA-Z0-9_-]+")
PREFIX = "kr1_"
# LiteLLM appends a Gemini signature to the call ids it makes (litellm factory.THOUGHT_SIGNATURE_SEPARATOR).
THOUGHT_SEPARATOR = "__thought__"


def client_call_id(upstream_id: str, signature: str | None = None) -> str:
    """The tool_use id the client sees for the backend's call `upstream_id` (with its signature, if any)."""
    if signature is None and not upstream_id.startswith(PREFIX) and ID_PATTERN.fullmatch(upstream_id):
        return upstream_id
    payload = [upstream_id] if signature is None else [upstream_id, signature]
    raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def upstream_call(client_id: str) -> tuple[str, str | None]:
    """(the backend's own call id, its thought signature or None) for a tool_use id the client sent back."""
    if not client_id.startswith(PREFIX):
        return client_id, None
    body = client_id[len(PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload = json.loads(raw)
    except (ValueError, binascii.Error):
        return client_id, None
    if (
        not isinstance(payload, list)
        or not 1 <= len(payload) <= 2
        or not all(isinstance(p, str) for p in payload)
        or not payload[0]
    ):
        return client_id, None
    return payload[0], (payload[1] if len(payload) == 2 else None)


def call_signature(call: dict) -> str | None:
    """The thought signature an OpenAI-shaped tool call carries: LiteLLM puts it in `provider_specific_fields`
    (of the call or of its function), Gemini's OpenAI-compatible endpoint in `extra_content.google`."""
    for holder in (call, call.get("function")):
        if not isinstance(holder, dict):
            continue
        fields = holder.get("provider_specific_fields")
        if isinstance(fields, dict):
            sig = fields.get("thought_signature")
            if isinstance(sig, str) and sig:
                return sig
    extra = call.get("extra_content")
    if isinstance(extra, dict):
        google = extra.get("google")
        if isinstance(google, dict):
            sig = google.get("thought_signature")
            if isinstance(sig, str) and sig:
                return sig
    return None


def client_id_for_call(upstream_id: str, call: dict) -> str:
    """client_call_id for an OpenAI-shaped tool call. A signature LiteLLM already appended to the id
    (`__thought__<sig>`) travels inside the id and is not stored twice."""
    sig = call_signature(call)
    if sig is not None and upstream_id.endswith(THOUGHT_SEPARATOR + sig):
        sig = None
    return client_call_id(upstream_id, sig)


def signature_of(upstream_id: str, signature: str | None) -> str | None:
    """The signature to send back for a call: the explicit one, else the one LiteLLM put in the id."""
    if signature is not None:
        return signature
    if THOUGHT_SEPARATOR in upstream_id:
        return upstream_id.split(THOUGHT_SEPARATOR, 1)[1] or None
    return None
