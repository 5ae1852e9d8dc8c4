"""Ids in Anthropic's formats: `msg_` + 24 base62 characters, `toolu_` + 24 base62 characters.

One `os.urandom` call per id, written in base62 (24 random bytes = 192 bits for 24 digits of ~5.95 bits: the
modulo bias is below 1e-14). `secrets.choice` per character cost one random-number call per character, which
showed up in the translator's per-request profile.
"""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # two digits per divmod: 62**2 = 3844
_DIGITS = 24


def _base62(n: int = _DIGITS) -> str:
    value = int.from_bytes(os.urandom(n), "big")
    pairs = _PAIRS
    out = []
    for _ in range(n // 2):
        value, r = divmod(value, 3844)
        out.append(pairs[r])
    if n % 2:
        out.append(_ALPHABET[value % 62])
    return "".join(out)


def new_message_id() -> str:
    return "msg_" + _base62(24)


def new_tool_use_id() -> str:
    return "toolu_" + _base62(24)
