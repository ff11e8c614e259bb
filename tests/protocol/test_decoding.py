"""JSON from peers: nesting is bounded like size, and too deep is malformed JSON."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from livepush.protocol.crdt import (
    AwarenessEntry,
    MalformedMessage,
    decode_awareness,
    encode_awareness,
)
from livepush.protocol.decoding import MAX_DEPTH, JsonDecoder, decode, nesting_exceeds


def depth_of(text: bytes) -> int:
    """The nesting depth of JSON text, the slow and obvious way."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text.decode():
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def random_value(rng: random.Random, depth: int, budget: list[int]) -> Any:
    """A random JSON value nested up to `depth`, with strings full of brackets and quotes."""
    budget[0] -= 1
    if depth == 0 or budget[0] <= 0 or rng.random() < 0.15:
        return rng.choice([1, "x[", '"{', None, 'a\\"[', "]]}", 2.5, True])
    if rng.random() < 0.5:
        return [random_value(rng, depth - 1, budget) for _ in range(rng.randint(0, 3))]
    return {str(i): random_value(rng, depth - 1, budget) for i in range(rng.randint(0, 3))}


def test_the_bound_is_exact_on_random_documents() -> None:
    rng = random.Random(20261204)
    for _ in range(2000):
        text = msgspec.json.encode(random_value(rng, rng.randint(0, 140), [400]))
        actual = depth_of(text)
        for limit in (1, 5, MAX_DEPTH):
            assert nesting_exceeds(text, limit) == (actual > limit), (text[:120], limit, actual)


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, False),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), True),
        (b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH, False),
        (b'{"a":[' * 33 + b"1" + b"]}" * 33, True),  # 66 levels, alternating
        (b'"' + b"[" * 1000 + b'"', False),  # brackets in a string are text
        (b"[" + b"[]," * 10_000 + b"[]]", False),  # wide, not deep
        (b"[[]" * 20_000 + b"]" * 20_000, True),
        (b"[" * 10_000, True),  # unterminated: still refused before decoding
    ],
)
def test_nesting(text: bytes, deep: bool) -> None:
    assert nesting_exceeds(text) is deep


def test_too_deep_is_malformed_json() -> None:
    with pytest.raises(msgspec.DecodeError, match="nested deeper than 64 levels"):
        decode(b"[" * 10_000 + b"]" * 10_000)
    assert decode(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None


def test_without_a_depth_bound_recursion_is_malformed_json_too() -> None:
    decoder: JsonDecoder[Any] = JsonDecoder(max_depth=None)
    with pytest.raises(msgspec.DecodeError, match="nested too deeply"):
        decoder.decode(b"[" * 100_000 + b"]" * 100_000)
    assert decoder.decode(b"[" * 200 + b"]" * 200) is not None


def test_an_awareness_state_nested_too_deep_is_malformed() -> None:
    deep = AwarenessEntry(1, 1, "[" * 10_000 + "]" * 10_000)
    with pytest.raises(MalformedMessage, match="not JSON"):
        decode_awareness(encode_awareness([deep]))
    fine = AwarenessEntry(2, 1, '{"user":{"name":"[Ada]"}}')
    assert decode_awareness(encode_awareness([fine])) == [fine]


def test_text_is_measured_like_bytes() -> None:
    """WebSocket text messages arrive as str: counted without a copy, the same answer."""
    assert not nesting_exceeds("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert nesting_exceeds("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert not nesting_exceeds('["' + "[" * 1000 + '"]')
