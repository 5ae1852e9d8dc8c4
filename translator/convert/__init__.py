"""Pure conversions between the Anthropic Messages API and OpenAI chat completions.

No I/O here: every function takes parsed bodies (pydantic models or plain dicts) and returns plain dicts,
so the server, the LiteLLM path and the tests all share one conversion layer.
"""
