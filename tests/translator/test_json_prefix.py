"""ObjectPrefix: every prefix of a JSON object is accepted whole and its closing completes it; everything that
can no longer become an object is cut exactly where it stops being one."""

from __future__ import annotations

import json
import random

import pytest

from translator.convert.json_prefix import ObjectPrefix


def _value(rng: random.Random, depth: int):
    r = rng.random()
    if depth > 3 or r < 0.3:
        return rng.choice([0, -1.5e3, 12, 1e-7, True, False, None, 'a"b\\c\n\té日\U0001F600/', "", "\u0001"])
    if r < 0.6:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f'k{i}"': _value(rng, depth + 1) for i in range(rng.randint(0, 3))}


@pytest.mark.parametrize("seed", range(20))
def test_every_prefix_accepted_and_closable(seed):
    rng = random.Random(seed)
    for _ in range(50):
        obj = {f"k{i}": _value(rng, 1) for i in range(rng.randint(0, 4))}
        s = json.dumps(obj, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1]))
        p = ObjectPrefix()
        for k, ch in enumerate(s):
            assert p.feed(ch) == 1
            assert isinstance(json.loads(s[: k + 1] + p.closing()), dict)
        assert p.done and p.closing() == ""
        q = ObjectPrefix()
        cuts = sorted(rng.sample(range(1, len(s)), min(len(s) - 1, 5)))
        assert sum(q.feed(s[a:b]) for a, b in zip([0, *cuts], [*cuts, len(s)])) == len(s) and q.done


@pytest.mark.parametrize(
    "text, accepted, closed",
    [
        ("not json", 0, ""),
        ("[1]", 0, ""),
        ('"{}"', 0, ""),
        ('{"a":tru e}', 8, '{"a":true}'),
        ('{"a" 1}', 5, '{"a" :null}'),
        ('{"a":01}', 6, '{"a":0}'),
        ('{"a":"x\ny"}', 7, '{"a":"x"}'),
        ("{}x", 2, "{}"),
        ('{"a":1]', 6, '{"a":1}'),
        ('{"a":1.}', 7, '{"a":1.0}'),
        ('{"a":"\\q"}', 7, '{"a":"\\\\"}'),
        ('{"a":"\\u00g', 10, '{"a":"\\u0000"}'),
        ('{"a":[1,]', 8, '{"a":[1,null]}'),
    ],
)
def test_invalid_input_cut_where_it_stops_being_an_object(text, accepted, closed):
    p = ObjectPrefix()
    assert p.feed(text) == accepted
    assert p.broken and p.feed("{}") == 0
    assert text[:accepted] + p.closing() == closed
    if closed:
        assert isinstance(json.loads(closed), dict)
