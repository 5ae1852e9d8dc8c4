"""LiteLLM's model metadata (output limits, reasoning support, which API a model lives on), read directly from
the JSON file LiteLLM ships (model_prices_and_context_window_backup.json): importing LiteLLM just for this
lookup would cost seconds of startup on the native paths that otherwise never need it."""

from __future__ import annotations

import importlib.util
import json
import os
import threading

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


def responses_only(provider: str, model: str) -> bool:
    """Whether OpenAI serves this model on the Responses API only (LiteLLM's `mode: responses`: gpt-5-codex,
    the codex and pro models, o1-pro, o3-pro, the deep-research models)."""
    return provider == "openai" and model_info(provider, model).get("mode") == "responses"
