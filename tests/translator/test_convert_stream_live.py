"""Tool input streamed as it arrives, stop sequences found in streamed text, call ids carrying Gemini signatures.

Event-level checks on OpenAIStreamConverter: when each block starts relative to the chunks that fed it, what
waits and why, and that every stream still passes the grammar checker and the SDK accumulator.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.translator.test_convert_stream import T, TU, check_grammar, chunk, fin, run, tc, text, usage
from translator.convert.call_ids import ID_PATTERN, signature_of, upstream_call
from translator.convert.openai_stream import OpenAIStreamConverter


def feed_each(chunks: list[dict], **kw: Any) -> tuple[list[list[tuple[str, dict]]], list[tuple[str, dict]]]:
    """Events produced per chunk (index i: after chunk i), and the whole stream incl. finish()."""
    conv = OpenAIStreamConverter(model="m", **kw)
    per = [conv.feed(c) for c in chunks]
    tail = conv.finish()
    every = [e for p in per for e in p] + tail
    check_grammar(every)
    return per, every


def kinds(events: list[tuple[str, dict]]) -> list[str]:
    out = []
    for name, data in events:
        if name == "content_block_start":
            out.append("start:" + data["content_block"]["type"])
        elif name == "content_block_delta":
            out.append(data["delta"]["type"])
        elif name == "content_block_stop":
            out.append("stop")
        else:
            out.append(name)
    return out


def test_tool_block_starts_with_its_name_and_arguments_stream_per_chunk():
    chunks = [
        tc(0, id="call_w", name="Write"),
        tc(0, args='{"file_path": "/a.py", '),
        tc(0, args='"content": "print(1)\\n'),
        tc(0, args='print(2)\\n"}'),
        fin("tool_calls"),
    ]
    per, _ = feed_each(chunks)
    assert kinds(per[0]) == ["message_start", "start:tool_use"]
    assert per[0][1][1]["content_block"] == {"type": "tool_use", "id": "call_w", "name": "Write", "input": {}}
    assert [d["delta"]["partial_json"] for _, d in per[1] + per[2]] == ['{"file_path": "/a.py", ', '"content": "print(1)\\n']
    # the object completes with the last piece: the block closes right away, before the finish chunk
    assert kinds(per[3]) == ["input_json_delta", "stop"]
    assert per[4] == []


@pytest.mark.parametrize(
    "chunks, content",
    [
        pytest.param(
            [
                text("Reading."),
                tc(0, id="c1", name="Read", args='{"file_path": "/a"}'),
                text("Now editing."),
                tc(1, id="c2", name="Edit", args='{"file_path": "/a", "old": "x", "new": "y"}'),
                text("Then testing."),
                tc(2, id="c3", name="Bash"),
                tc(2, args='{"command": "pytest"}'),
                fin("tool_calls"),
            ],
            [T("Reading."), TU("c1", "Read", {"file_path": "/a"}), T("Now editing."),
             TU("c2", "Edit", {"file_path": "/a", "old": "x", "new": "y"}), T("Then testing."),
             TU("c3", "Bash", {"command": "pytest"})],
            id="text-between-calls-keeps-its-place",
        ),
        pytest.param(
            [
                tc(0, id="a", name="A"),
                tc(1, id="b", name="B"),
                tc(0, args='{"x": '),
                text("between"),
                tc(1, args='{"y": 2}'),
                tc(0, args="1}"),
                fin("tool_calls"),
            ],
            [TU("a", "A", {"x": 1}), TU("b", "B", {"y": 2}), T("between")],  # b arrived before the text
            id="interleaved-calls-wait-in-arrival-order",
        ),
        pytest.param(
            [tc(0, id="a", name="A", args='{"x": 1, "y": tru'), tc(0, args="x, oops}"), fin("tool_calls")],
            [TU("a", "A", {"x": 1, "y": True})],
            id="invalid-continuation-not-forwarded-object-closed",
        ),
        pytest.param(
            [tc(0, id="a", name="A", args='  "{\\"x\\": 1}"'), fin("tool_calls")],
            [TU("a", "A", {"x": 1})],
            id="double-encoded-held-then-normalized",
        ),
        pytest.param(
            [tc(0, id="a", name="A", args='{"path": "/a"}'), tc(0, args="  \n"), tc(1, id="b", name="B", args="{}"), fin("tool_calls")],
            [TU("a", "A", {"path": "/a"}), TU("b", "B", {})],
            id="whitespace-after-a-complete-object",
        ),
    ],
)
def test_live_tool_streams_rebuild(chunks, content):
    _, msg = run(chunks)
    assert msg["content"] == content


def test_interleaved_call_waits_until_the_open_one_completes():
    chunks = [tc(0, id="a", name="A", args='{"x": '), tc(1, id="b", name="B", args='{"y": 2}'), tc(0, args="1}")]
    per, _ = feed_each(chunks + [fin("tool_calls")])
    assert kinds(per[1]) == []  # b waits: a is still receiving arguments
    assert kinds(per[2]) == ["input_json_delta", "stop", "start:tool_use", "input_json_delta", "stop"]


def test_higher_index_waits_for_a_lower_one_that_may_still_come():
    per, _ = feed_each([tc(1, id="b", name="B"), tc(0, id="a", name="A", args="{}"), tc(1, args="{}"), fin("tool_calls")])
    assert kinds(per[0]) == ["message_start"]
    assert [d["content_block"]["id"] for n, d in per[1] if n == "content_block_start"] == ["a", "b"]


@pytest.mark.parametrize("seed", range(40))
def test_random_sequential_calls_stream_live_with_text_in_place(seed):
    """Calls one after another (the common case), text between them, everything cut at random: every call's
    block starts on the chunk that completes its id and name, and the rebuilt message keeps arrival order."""
    rng = random.Random(seed)
    chunks: list[dict] = []
    expected: list[dict] = []
    starts: list[int] = []
    for k in range(rng.randint(1, 4)):
        if rng.random() < 0.6:
            words = "".join(rng.choice(["ab", " ", "é", "日本", "\n"]) for _ in range(rng.randint(1, 12)))
            cuts = sorted(rng.sample(range(1, len(words)), min(3, len(words) - 1))) if len(words) > 1 else []
            for a, b in zip([0, *cuts], [*cuts, len(words)]):
                chunks.append(text(words[a:b]))
            expected.append(T(words))
        inp = {"path": f"/src/{k}/{'é' * rng.randint(0, 3)}x.py", "body": "line\n" * rng.randint(0, 4), "n": [k, 2.5, None]}
        raw = json.dumps(inp, ensure_ascii=rng.random() < 0.5)
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(0, min(8, len(raw) - 1))))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        starts.append(len(chunks))
        chunks.append(tc(k, id=f"call_{k}", name=f"Tool{k}", args=pieces[0] if rng.random() < 0.5 else None))
        if chunks[-1]["choices"][0]["delta"]["tool_calls"][0]["function"].get("arguments") is not None:
            pieces = pieces[1:]
        chunks += [tc(k, args=p) for p in pieces]
        expected.append(TU(f"call_{k}", f"Tool{k}", inp))
    chunks += [fin("tool_calls"), usage(3, 3)]
    per, every = feed_each(chunks)
    for k, at in enumerate(starts):
        assert any(n == "content_block_start" and d["content_block"].get("id") == f"call_{k}" for n, d in per[at])
    _, msg = run(chunks)
    assert msg["content"] == expected


# ----------------------------------------------------------------------------------------- stop sequences


@pytest.mark.parametrize(
    "pieces, stops, content, stop_reason, stop_sequence",
    [
        pytest.param(["1, 2, 3", "###", " more"], ["###"], [T("1, 2, 3")], "stop_sequence", "###", id="whole-sequence-in-one-chunk"),
        pytest.param(["1, 2, 3#", "#", "# more"], ["###"], [T("1, 2, 3")], "stop_sequence", "###", id="split-across-chunks"),
        pytest.param(["a##b", "c"], ["###"], [T("a##bc")], "end_turn", None, id="partial-match-released"),
        pytest.param(["abc", "EN"], ["END"], [T("abcEN")], "end_turn", None, id="held-tail-flushed-at-the-end"),
        pytest.param(["xENDy", "STOP"], ["STOP", "END"], [T("x")], "stop_sequence", "END", id="earliest-sequence-wins"),
        pytest.param(["END"], ["END"], [], "stop_sequence", "END", id="sequence-only-no-text-block"),
    ],
)
def test_stop_sequence_found_in_stream(pieces, stops, content, stop_reason, stop_sequence):
    chunks = [text(p) for p in pieces] + [fin("stop"), usage(1, 1)]
    _, msg = run(chunks, stop_sequences=stops)
    assert msg["content"] == content
    assert (msg["stop_reason"], msg["stop_sequence"]) == (stop_reason, stop_sequence)


def test_stop_sequence_holds_back_at_most_its_length_and_ends_the_output():
    conv = OpenAIStreamConverter(model="m", stop_sequences=["</answer>", "##"])
    conv.start()
    sent = [d["delta"]["text"] for n, d in conv.feed(text("hello </ans")) if d.get("delta", {}).get("type") == "text_delta"]
    assert sent == ["hello "]  # "</ans" may start "</answer>"
    after = conv.feed(text("wer> then")) + conv.feed(tc(0, id="c", name="X", args="{}")) + conv.finish()
    assert not any(n == "content_block_start" for n, _ in after)  # nothing after the sequence
    assert after[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "</answer>"}


# ----------------------------------------------------------------------------------------- thought signatures


@pytest.mark.parametrize(
    "call, upstream_id, signature",
    [
        pytest.param(
            {"index": 0, "id": "call_1__thought__Cs0BAb+/x==", "type": "function",
             "function": {"name": "Read", "arguments": "{}"}, "provider_specific_fields": {"thought_signature": "Cs0BAb+/x=="}},
            "call_1__thought__Cs0BAb+/x==", "Cs0BAb+/x==",
            id="litellm-id-and-provider-fields",
        ),
        pytest.param(
            {"index": 0, "id": "function-call-1", "type": "function", "function": {"name": "Read", "arguments": "{}"},
             "extra_content": {"google": {"thought_signature": "EjQK/sig=="}}},
            "function-call-1", "EjQK/sig==",
            id="gemini-openai-compatible-extra-content",
        ),
        pytest.param(
            {"index": 0, "id": "call_plain", "type": "function", "function": {"name": "Read", "arguments": "{}"}},
            "call_plain", None,
            id="no-signature-id-unchanged",
        ),
    ],
)
def test_stream_tool_ids_carry_signatures_within_the_pattern(call, upstream_id, signature):
    _, msg = run([chunk({"tool_calls": [call]}), fin("tool_calls")])
    cid = msg["content"][0]["id"]
    assert ID_PATTERN.fullmatch(cid)
    back_id, back_sig = upstream_call(cid)
    assert back_id == upstream_id
    assert signature_of(back_id, back_sig) == signature
    if signature is None:
        assert cid == upstream_id


@pytest.mark.parametrize("seed", range(60))
def test_random_stop_sequences_match_a_plain_search(seed):
    """Random text cut at random, random sequences (often sharing prefixes with the text): what the client
    gets equals the text up to the earliest sequence, and no more than the longest sequence's length minus
    one character is ever held back."""
    rng = random.Random(seed)
    alphabet = "ab#\n"
    full = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 4))]
    hits = [(full.find(s), s) for s in stops if full.find(s) != -1]
    cuts = sorted(rng.sample(range(1, len(full)), rng.randint(0, min(8, len(full) - 1)))) if len(full) > 1 else []
    pieces = [full[a:b] for a, b in zip([0, *cuts], [*cuts, len(full)])] if full else []
    conv = OpenAIStreamConverter(model="m", stop_sequences=stops)
    sent = ""
    fed = ""
    events = conv.start()
    for p in pieces:
        fed += p
        out = conv.feed(text(p))
        events += out
        sent += "".join(d["delta"]["text"] for n, d in out if n == "content_block_delta")
        if not conv.stopped:
            assert len(fed) - len(sent) <= max(len(s) for s in stops) - 1
    events += conv.finish()
    check_grammar(events)
    got = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    delta = events[-2][1]["delta"]
    if hits:
        at = min(i for i, _ in hits)
        assert got == full[:at]
        assert delta["stop_reason"] == "stop_sequence" and full[at:].startswith(delta["stop_sequence"])
    else:
        assert got == full and delta["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    "stops, problem",
    [
        (["x" * 257], "stop_sequences[0]: String should have at most 256 characters"),
        (["s"] * 33, "stop_sequences: List should have at most 32 items"),
    ],
)
def test_stop_sequence_limits_are_a_400(stops, problem):
    from translator.errors import ApiError
    from translator.schemas.anthropic import MessagesRequest, validate_or_400

    with pytest.raises(ApiError) as err:
        validate_or_400(MessagesRequest, {"model": "m", "max_tokens": 1, "messages": [], "stop_sequences": stops})
    assert err.value.status == 400 and problem in err.value.message
    validate_or_400(MessagesRequest, {"model": "m", "max_tokens": 1, "messages": [], "stop_sequences": stops[:32]
                                      if len(stops) > 1 else ["x" * 256]})


def _litellm_shape(c: dict) -> dict:
    """A chunk as LiteLLM's `.model_dump()` gives it: every field present, null when the provider sent none."""
    delta = dict(c["choices"][0]["delta"])
    calls = delta.get("tool_calls")
    if calls:
        delta["tool_calls"] = [{"id": tc_.get("id"), "type": "function", "index": tc_.get("index"),
                                "function": {"name": tc_["function"].get("name"), "arguments": tc_["function"].get("arguments") or ""}}
                               for tc_ in calls]
    out = {"role": delta.get("role"), "content": delta.get("content"), "function_call": None,
           "tool_calls": delta.get("tool_calls"), "reasoning_content": None, "thinking_blocks": None,
           "provider_specific_fields": None}
    return {**c, "choices": [{**c["choices"][0], "delta": out, "logprobs": None}]}


@pytest.mark.parametrize("seed", range(40))
def test_random_interleavings_in_litellm_chunk_shape(seed):
    """The existing random-split property (arguments of up to three calls cut and interleaved at random, heads
    at random moments) on chunks shaped as the LiteLLM path hands them over."""
    rng = random.Random(seed)
    calls = []
    queues = []
    for k in range(rng.randint(1, 3)):
        inp = {"path": f"/src/{k}/x.py", "lines": list(range(rng.randint(0, 5))), "flag": bool(k % 2)}
        raw = json.dumps(inp)
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(0, min(6, len(raw) - 1))))
        events: list = [("args", raw[a:b]) for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        events.insert(rng.randint(0, len(events)), ("head", None))
        calls.append((k, inp))
        queues.append(events)
    chunks = [text("Working.")] if rng.random() < 0.5 else []
    while any(queues):
        k = rng.choice([i for i, q in enumerate(queues) if q])
        kind, piece = queues[k].pop(0)
        chunks.append(tc(k, id=f"call_{seed}_{k}", name=f"Tool{k}") if kind == "head" else tc(k, args=piece))
    chunks = [_litellm_shape(c) for c in chunks] + [fin("tool_calls"), usage(10, 10)]
    _, msg = run(chunks)
    assert [(b["id"], b["name"], b["input"]) for b in msg["content"] if b["type"] == "tool_use"] == \
        [(f"call_{seed}_{k}", f"Tool{k}", inp) for k, inp in calls]
