"""Upstream backends. Three paths, chosen by `translator.routing`:

- `openai_native`: OpenAI-compatible chat completions (OpenAI, a LiteLLM gateway, vLLM) with our own
  incremental SSE parsing; the hot path, kept lean. Direct requests go over `http1` (a small pooled HTTP/1.1
  client on asyncio and httptools), proxied ones over one aiohttp session (why: their docstrings).
- `anthropic_native`: Anthropic Messages passthrough, no conversion (one pooled httpx client).
- `litellm_path`: everything else through `litellm.acompletion` (imported lazily; it is slow to import).

The OpenAI-shaped paths return OpenAI chat-completion dicts (and chunk dicts when streaming) that the one
conversion layer in `translator.convert` turns into Anthropic messages and events.
"""
