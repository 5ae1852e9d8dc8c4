"""LiteLLM, imported once per process on first use (in a worker thread: it takes seconds), never at module
import. The LiteLLM backend and local token counting get it from here; the serving process registers
`after_import` hooks (the GC re-freeze) and reads `import_seconds` for its metric."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

_lock = threading.Lock()
_module: Any = None
import_seconds: float | None = None  # measured cold import time, exported as a metric and logged
after_import: list = []  # callables run once LiteLLM is imported (the serving process re-freezes the GC)


def _import_litellm() -> Any:
    global _module, import_seconds
    with _lock:
        if _module is None:
            # Never fetch the model price map from the internet at import time.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            t0 = time.perf_counter()
            import litellm  # noqa: PLC0415 - deliberately lazy

            litellm.telemetry = False
            litellm.suppress_debug_info = True
            litellm.drop_params = True  # params a provider does not take are dropped, not a 400
            import_seconds = time.perf_counter() - t0
            _module = litellm
            for hook in after_import:
                hook()
    return _module


async def get_litellm() -> Any:
    if _module is not None:
        return _module
    return await asyncio.to_thread(_import_litellm)
