"""Incremental check that the text seen so far is a prefix of one JSON object (pure; docs/conversion.md).

Tool call arguments are streamed to the client as `input_json_delta` while they arrive. A client accumulator
(the SDKs parse the growing buffer as partial JSON on every delta) fails on bytes that can no longer become a
JSON object, so every argument piece passes through `ObjectPrefix.feed`, which says how much of it keeps the
buffer a valid prefix. Each character is looked at once: string bodies (nearly all of a Write or Edit input)
are skipped with one regular-expression match per run, so the cost is linear in the input, not quadratic like
re-parsing the buffer per delta. `closing()` gives the shortest text that completes the prefix into a valid
object, for a call that ends early (length limit, or an invalid continuation that was not forwarded).

Hand-written because no JSON library here (json, orjson, pydantic_core/jiter) offers a resumable parser.
"""

from __future__ import annotations

import re

__all__ = ["ObjectPrefix"]

# States
_START, _OBJ_FIRST, _OBJ_KEY, _COLON, _VALUE, _ARR_FIRST, _AFTER, _STR, _ESC, _UNI, _LIT, _DONE = range(12)

_WS = " \t\n\r"
_STR_RUN = re.compile(r'[^"\\\x00-\x1f]*')
_HEX = frozenset("0123456789abcdefABCDEF")
_LIT_CHARS = frozenset("-+.eE0123456789truefalsn")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_PREFIX = re.compile(
    r"-?(?:|0|[1-9][0-9]*)|-?(?:0|[1-9][0-9]*)\.[0-9]*|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?[eE][+-]?[0-9]*"
)
_WORDS = ("true", "false", "null")


def _literal_prefix_ok(lit: str) -> bool:
    if lit[0] in "tfn":
        return any(w.startswith(lit) for w in _WORDS)
    return _NUMBER_PREFIX.fullmatch(lit) is not None


def _literal_complete(lit: str) -> bool:
    return lit in _WORDS or _NUMBER.fullmatch(lit) is not None


class ObjectPrefix:
    """Feed text pieces; `feed` returns how many characters of the piece keep the whole a valid JSON object
    prefix (all of it, normally). After a rejected character the checker is `broken` and accepts nothing more.
    `done` is true once the object is closed (only whitespace may follow)."""

    __slots__ = ("_state", "_stack", "_key", "_lit", "_uni", "broken")

    def __init__(self) -> None:
        self._state = _START
        self._stack: list[str] = []  # "{" / "["
        self._key = False  # the string being read is an object key
        self._lit = ""
        self._uni = 0
        self.broken = False

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def started(self) -> bool:
        return self._state != _START

    def feed(self, piece: str) -> int:
        if self.broken:
            return 0
        i, n = 0, len(piece)
        state = self._state
        while i < n:
            if state == _STR:
                i = _STR_RUN.match(piece, i).end()
                if i >= n:
                    break
                c = piece[i]
                if c == '"':
                    state = _COLON if self._key else _AFTER
                elif c == "\\":
                    state = _ESC
                else:  # a raw control character: invalid in JSON strings
                    break
                i += 1
                continue
            c = piece[i]
            if state == _LIT:
                if c in _LIT_CHARS:
                    if not _literal_prefix_ok(self._lit + c):
                        break
                    self._lit += c
                    i += 1
                    continue
                if not _literal_complete(self._lit):
                    break
                self._lit = ""
                state = _AFTER  # the terminating character is read below
            if state == _ESC:
                if c == "u":
                    state, self._uni = _UNI, 4
                elif c in '"\\/bfnrt':
                    state = _STR
                else:
                    break
                i += 1
                continue
            if state == _UNI:
                if c not in _HEX:
                    break
                self._uni -= 1
                if not self._uni:
                    state = _STR
                i += 1
                continue
            if c in _WS:
                i += 1
                continue
            if state == _START:
                if c != "{":
                    break
                self._stack.append("{")
                state = _OBJ_FIRST
            elif state in (_OBJ_FIRST, _OBJ_KEY):
                if c == '"':
                    state, self._key = _STR, True
                elif c == "}" and state == _OBJ_FIRST:
                    state = self._pop()
                else:
                    break
            elif state == _COLON:
                if c != ":":
                    break
                state = _VALUE
            elif state in (_VALUE, _ARR_FIRST):
                if c == "{":
                    self._stack.append("{")
                    state = _OBJ_FIRST
                elif c == "[":
                    self._stack.append("[")
                    state = _ARR_FIRST
                elif c == '"':
                    state, self._key = _STR, False
                elif c == "]" and state == _ARR_FIRST:
                    state = self._pop()
                elif c in _LIT_CHARS and _literal_prefix_ok(c):
                    state, self._lit = _LIT, c
                else:
                    break
            elif state == _AFTER:
                top = self._stack[-1]
                if c == ",":
                    state = _OBJ_KEY if top == "{" else _VALUE
                elif (c == "}" and top == "{") or (c == "]" and top == "["):
                    state = self._pop()
                else:
                    break
            else:  # _DONE: only whitespace may follow
                break
            i += 1
        self._state = state
        if i < n:
            self.broken = True
        return i

    def _pop(self) -> int:
        self._stack.pop()
        return _AFTER if self._stack else _DONE

    def closing(self) -> str:
        """The shortest text that turns the accepted prefix into a complete JSON object ("" when it already is
        one or nothing was accepted)."""
        state = self._state
        if state in (_START, _DONE):
            return ""
        out = []
        if state == _LIT:
            lit = self._lit
            if lit[0] in "tfn":
                word = next(w for w in _WORDS if w.startswith(lit))
                out.append(word[len(lit):])
            elif lit[-1] in "-+.eE":
                out.append("0")
            state = _AFTER
        elif state in (_STR, _ESC, _UNI):
            if state == _ESC:
                out.append("\\")
            elif state == _UNI:
                out.append("0" * self._uni)
            out.append('"')
            state = _COLON if self._key else _AFTER
        if state == _COLON:
            out.append(":null")
        elif state == _VALUE:
            out.append("null")
        elif state == _OBJ_KEY:
            out.append('"":null')
        for opener in reversed(self._stack):
            out.append("}" if opener == "{" else "]")
        return "".join(out)
