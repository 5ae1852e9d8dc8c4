"""Upstream backends behind one protocol (`translator.backends.base`), one module per backend kind, chosen by
`Target.backend` through the registry (`translator.backends.registry`):

- `openai_chat` (kind `openai`): OpenAI-compatible chat completions (OpenAI, a LiteLLM gateway, vLLM) with our
  own incremental SSE parsing; the hot path, kept lean.
- `openai_responses` (kind `responses`): the OpenAI Responses API, on the same client as `openai_chat` with
  its own conversions (reasoning carried across turns).
- `anthropic_messages` (kind `anthropic`): Anthropic Messages passthrough, no conversion.
- `litellm_sdk` (kind `litellm`): everything else through `litellm.acompletion` (imported lazily).

The HTTP backends share one transport (`transport`: the pooled `http1` client for direct requests, aiohttp
only for requests through a proxy). The OpenAI-shaped backends share the conversion (`chat`).
"""
