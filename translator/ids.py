"""Ids in Anthropic's formats: `msg_` + 24 base62 characters, `toolu_` + 24 base62 characters."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(n: int) -> str:
    choice = secrets.choice
    return "".join(choice(_ALPHABET) for _ in range(n))


def new_message_id() -> str:
    return "msg_" + _base62(24)


def new_tool_use_id() -> str:
    return "toolu_" + _base62(24)
