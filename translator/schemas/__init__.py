"""Typed models of the API shapes the translator accepts (Anthropic Messages API)."""
