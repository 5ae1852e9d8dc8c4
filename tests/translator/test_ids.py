"""Id formats (Anthropic's shapes) and uniqueness."""

from __future__ import annotations

import os
import re

import pytest

from translator.ids import new_message_id, new_request_id, new_tool_use_id


@pytest.mark.parametrize("make,pattern", [
    (new_message_id, r"msg_[0-9A-Za-z]{24}"),
    (new_tool_use_id, r"toolu_[0-9A-Za-z]{24}"),
    (new_request_id, r"req_[0-9a-f]{24}"),
])
def test_format_and_uniqueness(make, pattern):
    ids = [make() for _ in range(5000)]
    assert all(re.fullmatch(pattern, i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_every_base62_digit_occurs():
    digits = "".join(new_message_id()[4:] for _ in range(2000))
    assert len(set(digits)) == 62


def test_a_forked_child_draws_different_ids():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, new_message_id().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 100).decode()
    os.waitpid(pid, 0)
    os.close(r)
    parent = new_message_id()
    assert re.fullmatch(r"msg_[0-9A-Za-z]{24}", child) and child != parent
