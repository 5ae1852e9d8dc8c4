"""What each routed backend accepts (`BackendCaps` for the conversion layer), built once per target.

Sources, later ones win: defaults per provider, LiteLLM's model metadata (output token limit, reasoning
support), the routing rule's `caps`. The metadata comes from the JSON file LiteLLM ships
(model_prices_and_context_window_backup.json), read directly: importing LiteLLM just for this lookup would cost
seconds of startup on the native paths that otherwise never need it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import threading
from functools import lru_cache
from typing import Any, Mapping

from translator.convert.openai_request import BackendCaps
from translator.routing import Target
from translator.settings import ConfigError

_CAP_FIELDS = {f.name for f in dataclasses.fields(BackendCaps)}
_meta_lock = threading.Lock()
_meta: dict[str, dict] | None = None


def _metadata() -> dict[str, dict]:
    global _meta
    with _meta_lock:
        if _meta is None:
            _meta = {}
            spec = importlib.util.find_spec("litellm")
            locations = list(spec.submodule_search_locations or []) if spec else []
            for loc in locations:
                path = os.path.join(loc, "model_prices_and_context_window_backup.json")
                if os.path.isfile(path):
                    with open(path, encoding="utf-8") as fh:
                        _meta = json.load(fh)
                    break
    return _meta


def model_info(provider: str, model: str) -> dict:
    """LiteLLM's metadata for a model: tries `provider/model`, then `model` (bare name)."""
    meta = _metadata()
    bare = model.split("/", 1)[1] if model.startswith(provider + "/") else model
    for key in (f"{provider}/{bare}", bare):
        info = meta.get(key)
        if isinstance(info, dict):
            return info
    return {}


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
        field = "extra_content" if target.path == "openai" and p == "openai" else "provider_specific_fields"
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
