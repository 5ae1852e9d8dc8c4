"""An upstream body with pre-encoded tools (translator.convert.encoded_json) is byte for byte what orjson makes of
the same body, wherever the key is and whatever surrounds it (table-driven)."""

from __future__ import annotations

import orjson
import pytest

from translator.convert import encoded_json
from translator.convert.encoded_json import EncodedList

TOOLS = [{"type": "function", "function": {"name": "Bash", "description": "runs \"it\"\n\u00e9 \u2028 ✓",
                                           "parameters": {"type": "object", "properties": {"x": {"type": "number"}}}}},
         {"type": "function", "function": {"name": "Read", "parameters": {}}}]

# name -> the body (with TOOLS under "tools")
BODIES = {
    "tools between other keys": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
                                 "tool_choice": "auto", "stream": False},
    "tools the only key": {"tools": TOOLS},
    "tools first": {"tools": TOOLS, "model": "m"},
    "tools last": {"model": "m", "max_tokens": 5, "tools": TOOLS},
    "a tools key nested in another value": {"model": "m", "metadata": {"tools": [1, 2]}, "tools": TOOLS,
                                            "stream_options": {"include_usage": True}},
    "text that looks like the key": {"messages": [{"role": "user", "content": '","tools":[] }'}], "tools": TOOLS,
                                     "tool_choice": {"type": "function", "function": {"name": "Bash"}}},
    "empty tools": {"model": "m", "tools": [], "stream": True},
}


@pytest.mark.parametrize("name", list(BODIES))
def test_spliced_body_is_the_body_orjson_makes(name):
    body = BODIES[name]
    expected = orjson.dumps(body)
    spliced = {k: (EncodedList(v) if k == "tools" else v) for k, v in body.items()}
    assert encoded_json.dumps(spliced) == expected
    # Carried bytes are used as they are (never encoded again) ...
    marked = {k: (EncodedList(v, orjson.dumps(v) + b" ") if k == "tools" else v) for k, v in body.items()}
    assert encoded_json.dumps(marked) != expected and orjson.loads(encoded_json.dumps(marked)) == body
    # ... and a plain list, or no tools, is encoded the usual way.
    assert encoded_json.dumps(body) == expected
    assert encoded_json.dumps({k: v for k, v in body.items() if k != "tools"}) == orjson.dumps(
        {k: v for k, v in body.items() if k != "tools"})


def test_an_encoded_list_is_a_list_to_everything_else():
    tools = EncodedList(TOOLS)
    assert tools == TOOLS and orjson.dumps(tools) == orjson.dumps(TOOLS) == tools.json
    assert orjson.loads(tools.json) == TOOLS
