"""What each routed backend accepts (`BackendCaps` for the conversion layer), built once per target.

Sources, later ones win: defaults per provider, LiteLLM's model metadata (output token limit, reasoning
support), the routing rule's `caps`. The metadata is LiteLLM's model file
(`translator.model_meta`).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, Mapping

from translator.convert.openai_request import BackendCaps
from translator.model_meta import model_info
from translator.routing import Target
from translator.settings import ConfigError

_CAP_FIELDS = {f.name for f in dataclasses.fields(BackendCaps)}


def _is_openai_reasoning(model: str) -> bool:
    name = model.rsplit("/", 1)[-1].lower()
    return name.startswith(("o1", "o3", "o4", "gpt-5"))


def _is_gemini(model: str) -> bool:
    return model.rsplit("/", 1)[-1].lower().startswith("gemini")


def default_caps(target: Target) -> dict[str, Any]:
    p = target.provider
    out: dict[str, Any] = {}
    if p in ("openai", "litellm_proxy", "azure"):
        if _is_openai_reasoning(target.model):
            out.update(use_max_completion_tokens=True, reasoning_effort=True, sampling_params=False)
        if p == "litellm_proxy":
            out.update(reasoning_effort=True)  # the gateway maps reasoning_effort per provider
    elif p.startswith("gemini") or p.startswith("vertex_ai"):
        out.update(gemini_schema=True, top_k=True, pdf_file_parts=True, max_stop_sequences=5)
    if _is_gemini(target.model):
        # Thought signatures ride in the client's tool_use ids and go back where each path reads them: LiteLLM
        # (its gemini/ provider, or a LiteLLM gateway) in provider_specific_fields and in its own call ids
        # (`call_..__thought__<sig>`, longer than OpenAI's 40, sent back whole); Gemini's OpenAI-compatible
        # endpoint in extra_content.google.
        field = "extra_content" if target.backend == "openai" and p == "openai" else "provider_specific_fields"
        out.update(thought_signature_field=field, max_tool_call_id_length=None, gemini_schema=True)
    if p in ("deepseek",):
        out.update(reasoning_content_input=True)
    info = model_info(p, target.model)
    if isinstance(info.get("max_output_tokens"), int):
        out["max_output_tokens"] = info["max_output_tokens"]
    if info.get("supports_reasoning") and target.backend == "litellm":
        out["reasoning_effort"] = True  # LiteLLM maps reasoning_effort onto the provider's controls
    return out


def validate_caps(caps: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(caps) - _CAP_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown caps {', '.join(unknown)} (known: {', '.join(sorted(_CAP_FIELDS))})")
    try:
        BackendCaps(**dict(caps))
    except TypeError as exc:
        raise ConfigError(f"{where}: invalid caps ({exc})") from None


@lru_cache(maxsize=1024)
def _caps_cached(provider: str, model: str, backend: str, overrides: tuple) -> BackendCaps:
    target = Target(backend, provider, model)  # type: ignore[arg-type]
    values = default_caps(target)
    values.update(dict(overrides))
    return BackendCaps(**values)


def caps_for(target: Target) -> BackendCaps:
    return _caps_cached(target.provider, target.model, target.backend, tuple(sorted(target.caps.items())))
