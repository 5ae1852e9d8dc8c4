"""Which credential goes upstream, and the fingerprint that goes into logs instead of it.

Rule (ARCHITECTURE.md, header contract): the bearer credential when present (behind Envoy this is the
caller's key that ext_authz normalized into `Authorization: Bearer`); otherwise, for direct use without Envoy,
the client's `x-api-key` (configurable); otherwise the provider's static key from the environment; otherwise
401. The translator never decides who may call: it only picks which credential to forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from keyrelay_common.identity import KEY_ID_HEADER, key_id
from translator.errors import ApiError
from translator.routing import Target
from translator.settings import Settings

Source = Literal["bearer", "x-api-key", "static", "none"]


@dataclass(frozen=True)
class Credential:
    key: str | None = field(repr=False)
    source: Source
    key_id: str | None  # fingerprint for logs; never the key


fingerprint = key_id  # the x-authz-key-id construction (keyrelay_common.identity)


def client_key(headers: Mapping[str, str], *, accept_x_api_key: bool) -> tuple[str | None, Source]:
    """The credential the client (or Envoy on its behalf) sent. `headers` has lower-case names."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), "bearer"
    if accept_x_api_key:
        key = headers.get("x-api-key", "").strip()
        if key:
            return key, "x-api-key"
    return None, "none"


def static_key(settings: Settings, provider: str) -> str | None:
    if provider in ("openai", "litellm_proxy", "azure", "azure_ai", "openrouter", "hosted_vllm"):
        return settings.openai_api_key
    if provider == "anthropic":
        return settings.anthropic_api_key
    if provider == "gemini":
        return settings.gemini_api_key
    return None


def resolve(headers: Mapping[str, str], target: Target, settings: Settings) -> Credential:
    """Pick the upstream credential for a request to `target`; raise 401 when one is needed and none exists."""
    key, source = client_key(headers, accept_x_api_key=settings.accept_x_api_key)
    forwarded_id = headers.get(KEY_ID_HEADER) or None
    if target.key_mode == "none":
        return Credential(None, "none", forwarded_id or (fingerprint(key) if key else None))
    if key:
        return Credential(key, source, forwarded_id or fingerprint(key))
    static = static_key(settings, target.provider)
    if static:
        return Credential(static, "static", "static:" + fingerprint(static)[:8])
    if target.key_mode == "optional":
        return Credential(None, "none", None)
    raise ApiError(401, "authentication_error",
                   f"no credential for the {target.provider} backend: send Authorization: Bearer <key> "
                   f"(or x-api-key), or configure the translator's static key for this provider")
