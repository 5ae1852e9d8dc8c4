"""Ids in Anthropic's formats: `msg_` + 24 base62 characters, `toolu_` + 24 base62 characters; request ids
`req_` + 24 hex characters.

These ids only need to be unique, not unpredictable (they are not credentials), so they come from a
per-process generator seeded from the OS (re-seeded in a forked child) instead of one `getrandom` system call
per id: 192 random bits written in base62 (24 digits of ~5.95 bits; the modulo bias is below 1e-14).
"""

from __future__ import annotations

import os
import random

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # two digits per divmod: 62**2 = 3844
_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


def _base62(n: int = 24) -> str:
    value = _rng.getrandbits(8 * n)
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


def new_request_id() -> str:
    return "req_%024x" % _rng.getrandbits(96)
