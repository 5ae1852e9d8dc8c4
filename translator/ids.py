"""Ids in Anthropic's formats: `msg_` + 24 base62 characters, `toolu_` + 24 base62 characters; request ids
`req_` + 24 hex characters.

These ids only need to be unique, not unpredictable (they are not credentials), so they come from a
per-process generator seeded from the OS (re-seeded in a forked child) instead of one `getrandom` system call
per id; random bytes become base62 digits by rejection sampling (no bias).
"""

from __future__ import annotations

import os
import random

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Random bytes to base62 digits in C (bytes.translate): byte b < 248 becomes _ALPHABET[b % 62] (248 = 4 * 62, so
# every digit is equally likely), bytes 248..255 are dropped (rejection sampling, no bias).
_TABLE = bytes((ord(_ALPHABET[b % 62]) if b < 248 else 0) for b in range(256))
_REJECT = bytes(range(248, 256))
_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


def _base62(n: int = 24) -> str:
    out = b""
    while len(out) < n:  # 32 bytes keep ~31 digits; a second round is needed about once in 10**9 ids
        out += _rng.randbytes(n + 8).translate(_TABLE, _REJECT)
    return out[:n].decode("ascii")


def new_message_id() -> str:
    return "msg_" + _base62(24)


def new_tool_use_id() -> str:
    return "toolu_" + _base62(24)


def new_request_id() -> str:
    return "req_%024x" % _rng.getrandbits(96)
