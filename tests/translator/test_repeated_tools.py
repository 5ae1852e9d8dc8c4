"""Tool definitions decoded once (translator.repeated_tools): a body decoded with the cache gives exactly what
it gives without, whatever the body does around its `tools` key (table-driven), refuses what it refuses with the
same message, and the cache stays within its bounds."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from translator.errors import ApiError
from translator.repeated_tools import RepeatedTools
from translator.request_body import RequestLimits, decode_request
from translator.schemas.anthropic import MessagesRequest

LIMITS = RequestLimits(32 << 20, 100_000, 100_000, 600)
CC = json.loads((Path(__file__).parent / "fixtures" / "claude_code_request.json").read_text())
TOOLS = CC["tools"]
OTHER = [{"name": "only", "input_schema": {"type": "object"}}]


def spaced(data: dict) -> bytes:
    return json.dumps(data).encode()  # ", " and ": " separators, non-ASCII escaped


def compact(data: dict) -> bytes:
    return orjson.dumps(data)


def with_tools_at(position: int, text: bytes) -> bytes:
    """The fixture with `text` as the raw JSON of its tools value, the key at `position` of the object."""
    rest = {k: v for k, v in CC.items() if k != "tools"}
    items = [json.dumps(k).encode() + b": " + json.dumps(v).encode() for k, v in rest.items()]
    items.insert(position, b'"tools" :\n ' + text)
    return b"{" + b", ".join(items) + b"}"


def nested_first(data: dict) -> bytes:
    """The same tools also as the value of a nested `tools` key that comes before the top-level one."""
    out = dict(data)
    out["metadata"] = {**data["metadata"], "x": {"tools": TOOLS}}
    return spaced({"metadata": out.pop("metadata"), **out})


def duplicate_key(data: dict) -> bytes:
    """The cached tools under a first `tools` key, other tools under a second one (the last one counts)."""
    raw = spaced(data)
    return raw[:-1] + b', "tools": ' + json.dumps(OTHER).encode() + b"}"


def escaped_key(data: dict) -> bytes:
    """The cached tools under the key `"tools` (an escaped quote), no `tools` key at all."""
    rest = {k: v for k, v in data.items() if k != "tools"}
    return spaced(rest)[:-1] + b', "\\"tools": ' + json.dumps(TOOLS).encode() + b"}"


def one_byte_off(data: dict) -> bytes:
    tools = json.loads(json.dumps(TOOLS))
    tools[-1]["description"] = tools[-1].get("description", "") + "!"
    return spaced({**data, "tools": tools})


# body -> (its raw JSON, whether it is decoded from the cache learned from the spaced / the compact fixture)
BODIES = {
    "claude code, spaced": (spaced(CC), True, False),
    "claude code, compact": (compact(CC), False, True),
    "tools first, whitespace around the colon": (with_tools_at(0, json.dumps(TOOLS).encode()), True, False),
    "tools last": (with_tools_at(len(CC) - 1, json.dumps(TOOLS).encode()), True, False),
    "the same tools nested before the top-level key": (nested_first(CC), False, False),
    "a second tools key wins": (duplicate_key(CC), False, False),
    "a key with an escaped quote": (escaped_key(CC), False, False),
    "tools one byte off": (one_byte_off(CC), False, False),
}


async def decode(raw: bytes, cache: RepeatedTools | None):
    return await decode_request(raw, MessagesRequest, LIMITS, cache)


async def warm(cache: RepeatedTools, raw: bytes) -> None:
    for _ in range(2):  # learned on the second sighting
        await decode(raw, cache)
    assert len(cache) == 1


@pytest.mark.parametrize("name", list(BODIES))
@pytest.mark.parametrize("learned_from", [spaced, compact])
async def test_a_body_decodes_with_the_cache_as_without(name, learned_from):
    cache = RepeatedTools()
    await warm(cache, learned_from(CC))
    (entry,) = cache._entries.values()
    raw, hit_spaced, hit_compact = BODIES[name]
    expected_data, expected_req = await decode(raw, None)
    for _ in range(2):
        data, req = await decode(raw, cache)
        assert data == expected_data and list(data) == list(expected_data)  # the same value, the same key order
        assert req == expected_req and req.model_fields_set == expected_req.model_fields_set
        assert (data.get("tools") is entry.value) == (hit_spaced if learned_from is spaced else hit_compact)


async def test_the_cache_is_used_for_the_same_bytes():
    cache = RepeatedTools()
    raw = spaced(CC)
    await warm(cache, raw)
    (_, entry), = [cache.split(raw)]
    data, req = await decode(raw, cache)
    assert data["tools"] is entry.value and req.tools == entry.tools and req.tools is not entry.tools
    assert cache.split(one_byte_off(CC)) is None


@pytest.mark.parametrize("mutate,fragment", [
    (lambda raw: raw[:-1] + b', "x": [1,]}', "not valid JSON"),
    (lambda raw: raw.replace(b'"max_tokens": 64000', b'"max_tokens": 0'), "max_tokens"),
    (lambda raw: raw.replace(b'"messages": [', b'"messages": [{"role": "robot", "content": "x"}, ', 1), "role"),
])
async def test_a_refused_body_is_refused_with_the_same_message(mutate, fragment):
    cache = RepeatedTools()
    raw = spaced(CC)
    await warm(cache, raw)
    bad = mutate(raw)
    assert cache.split(bad) is not None
    with pytest.raises(ApiError) as without:
        await decode(bad, None)
    with pytest.raises(ApiError) as with_cache:
        await decode(bad, cache)
    assert fragment in without.value.message
    assert (with_cache.value.status, with_cache.value.message) == (without.value.status, without.value.message)


async def test_tools_seen_once_or_small_are_not_kept():
    cache = RepeatedTools()
    await decode(spaced(CC), cache)
    assert len(cache) == 0  # seen once
    small = spaced({**CC, "tools": OTHER * 3})
    for _ in range(3):
        await decode(small, cache)
    assert len(cache) == 0  # under MIN_BYTES


@pytest.mark.parametrize("bound", [{"max_entries": 2}, {"max_total_bytes": len(json.dumps(TOOLS)) * 2 + 10}])
async def test_the_cache_keeps_within_its_bounds(bound):
    cache = RepeatedTools(**bound)
    bodies = []
    for i in range(3):
        tools = json.loads(json.dumps(TOOLS))
        tools[0]["name"] = f"Tool{i}"
        bodies.append(spaced({**CC, "tools": tools}))
        for _ in range(2):
            await decode(bodies[-1], cache)
    assert len(cache) == 2  # the least recently used went
    assert cache.split(bodies[0]) is None and cache.split(bodies[1]) and cache.split(bodies[2])


async def test_converting_a_request_leaves_the_shared_entry_as_it_was():
    from translator.convert.openai_request import BackendCaps, anthropic_to_openai
    from translator.convert.responses_request import anthropic_to_responses

    cache = RepeatedTools()
    raw = spaced(CC)
    await warm(cache, raw)
    (entry,) = cache._entries.values()
    _, req = await decode(raw, cache)
    for caps in (BackendCaps(), BackendCaps(gemini_schema=True, max_tool_name_length=8)):
        anthropic_to_openai(req, model="m", caps=caps)
        anthropic_to_responses(req, model="m", caps=caps)
    assert entry.value == orjson.loads(entry.text)
    assert entry.tools == MessagesRequest.model_validate({**CC, "tools": orjson.loads(entry.text)}).tools


async def test_tools_too_deep_for_the_standard_scanner_are_decoded_and_not_kept():
    deep = b'{"a":' * 1010 + b'{"type":"object"}' + b"}" * 1010  # deeper than the standard scanner goes
    rest = {k: v for k, v in CC.items() if k != "tools"}
    raw = spaced(rest)[:-1] + b', "tools": [{"name": "deep", "input_schema": ' + deep + b"}, " + \
        json.dumps(TOOLS[:2]).encode()[1:] + b"}"
    cache = RepeatedTools()
    for _ in range(3):
        data, req = await decode(raw, cache)
        assert [t.name for t in req.tools] == ["deep"] + [t["name"] for t in TOOLS[:2]]
    assert len(cache) == 0


async def test_tools_that_change_on_every_request_stop_costing_scans(monkeypatch):
    from translator import repeated_tools

    scans = []
    span = repeated_tools._span
    monkeypatch.setattr(repeated_tools, "_span", lambda raw, value: scans.append(1) or span(raw, value))
    cache = RepeatedTools()
    for i in range(40):  # the same names and description lengths, other text each time
        tools = json.loads(json.dumps(TOOLS))
        tools[0]["description"] = f"{i:04d}" + tools[0]["description"][4:]
        raw = spaced({**CC, "tools": tools})
        assert (await decode(raw, cache)) == (await decode(raw, None))
    assert len(scans) == repeated_tools.SCAN_CREDIT


@pytest.mark.parametrize("env,expect", [
    ({}, 4 * 1024 * 1024),
    ({"TRANSLATOR_TOOLS_CACHE_BYTES": "65536"}, 65536),
    ({"TRANSLATOR_TOOLS_CACHE_BYTES": "0"}, None),  # off: every body decoded the usual way
])
async def test_the_setting_bounds_or_turns_off_the_served_cache(env, expect):
    from translator.app import create_app
    from translator.settings import load_settings

    service = create_app(load_settings([], env)).state.keyrelay
    cache = service.repeated_tools
    assert (cache if cache is None else cache._max_bytes) == expect  # noqa: SLF001
    if cache is not None:
        raw = spaced(CC)
        await warm(cache, raw)
        assert (len(cache) == 1) == (len(json.dumps(TOOLS)) <= expect)  # the fixture's ~50 KB of tools


# ---------------------------------------------------------------- kept conversions (`RepeatedTools.form`)

SERVER_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
# name -> (the tools sent, the caps they are converted for)
CONVERSIONS = {
    "claude code, plain OpenAI": (TOOLS, {}),
    "Gemini schemas, names shortened": (TOOLS, {"gemini_schema": True, "max_tool_name_length": 8}),
    "any name length": (TOOLS, {"max_tool_name_length": None}),
    "with a server tool (noted, dropped)": (TOOLS + [SERVER_TOOL], {"max_tool_name_length": 12}),
}


async def kept_form(cache: RepeatedTools, req, caps):
    from translator.backends.chat import _kept_form

    tools = req.tools
    return cache.form(tools.entry, ("chat", caps), lambda: _kept_form(tools, caps))


@pytest.mark.parametrize("name", list(CONVERSIONS))
async def test_a_kept_conversion_gives_the_body_a_fresh_one_gives(name):
    from translator.convert import encoded_json
    from translator.convert.openai_request import BackendCaps, anthropic_to_openai, tool_name_map
    from translator.repeated_tools import CachedTools

    tools, caps_fields = CONVERSIONS[name]
    caps = BackendCaps(**caps_fields)
    raw = spaced({**CC, "tools": tools})
    cache = RepeatedTools()
    await warm(cache, raw)
    _, plain = await decode(raw, None)
    fresh_notes: list[str] = []
    fresh = anthropic_to_openai(plain, model="m", caps=caps, notes=fresh_notes)
    for _ in range(3):  # made on the first use, kept for the next ones
        _, req = await decode(raw, cache)
        assert type(req.tools) is CachedTools
        converted = await kept_form(cache, req, caps)
        notes: list[str] = []
        body = anthropic_to_openai(req, model="m", caps=caps, notes=notes, converted_tools=converted)
        assert encoded_json.dumps(body) == orjson.dumps(fresh)  # byte for byte
        assert notes == fresh_notes and converted.names == tool_name_map(plain, caps)
    (entry,) = cache._entries.values()
    assert list(entry.forms) == [("chat", caps)]
    assert entry.value == orjson.loads(entry.text)  # the entry stays as it was
    if caps.max_tool_name_length == 8:
        assert converted.names and any("shortened" in n for n in notes)


async def test_kept_conversions_count_toward_the_bound_and_are_bounded_per_entry():
    from translator import repeated_tools

    raw = spaced(CC)
    cache = RepeatedTools()
    await warm(cache, raw)
    (entry,) = cache._entries.values()
    text = len(entry.text)
    for i in range(repeated_tools.MAX_FORMS + 2):
        assert cache.form(entry, i, lambda i=i: (f"form {i}", 1000 + i)) == f"form {i}"
    kept = list(range(2, repeated_tools.MAX_FORMS + 2))  # the least recently used went
    assert list(entry.forms) == kept
    assert entry.size == cache._bytes == text + sum(1000 + i for i in kept)
    assert cache.form(entry, 2, lambda: pytest.fail("made again")) == "form 2"

    # A conversion that does not fit beside its entry is made but not kept.
    small = RepeatedTools(max_total_bytes=text + 100)
    await warm(small, raw)
    (entry,) = small._entries.values()
    assert small.form(entry, "big", lambda: ("big", 101)) == "big" and not entry.forms
    assert entry.size == small._bytes == text

    # Bytes of conversions push the least recently used entry out.
    two = RepeatedTools(max_total_bytes=2 * text + 1000)
    other = spaced({**CC, "tools": [{**TOOLS[0], "name": "Other"}] + TOOLS[1:]})
    await warm(two, other)
    for _ in range(2):
        await decode(raw, two)
    assert len(two) == 2
    _, req = await decode(raw, two)
    assert two.form(req.tools.entry, "k", lambda: ("v", 1001)) == "v"
    assert len(two) == 1 and two.split(other) is None and two.split(raw) is not None
    assert two._bytes == text + 1001
