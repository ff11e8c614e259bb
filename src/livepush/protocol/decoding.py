"""JSON from peers, decoded within bounds.

msgspec decodes nesting recursively, limited only by the interpreter's recursion limit: a
20 KB message of 10,000 nested arrays raised `RecursionError`, which no handler expected (the
connection was closed 1011 with a traceback; the HTTP API answered a plain-text 500). And a
value decoded near that limit could fail later, when it is encoded again deeper in the stack
(presence state, cursor data, awareness).

So nesting is a bound like size: JSON a peer sends is at most `MAX_DEPTH` levels deep, checked
before decoding, and anything deeper is a `msgspec.DecodeError` like any other malformed JSON
(every caller already answers that as `invalid_json`, with this message). The check costs two
`bytes.count` calls when the text has at most `MAX_DEPTH` brackets (every command a client
sends in practice); otherwise it strips strings and peels matched bracket pairs a level at a
time, each pass one `bytes.replace`, at most `MAX_DEPTH` passes.

Bodies whose values are kept as raw bytes (the publish API's `data`) need no depth bound of
their own, only the recursion guard: `JsonDecoder(..., max_depth=None)`.
"""

from __future__ import annotations

import re
from typing import Any, Final, Generic, TypeVar

import msgspec

#: The deepest nesting of objects and arrays accepted from a peer.
MAX_DEPTH: Final = 64

T = TypeVar("T")

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: Objects become arrays for counting: only the nesting matters (malformed text such as
#: `[}` is the decoder's to refuse).
_ONE_KIND = bytes.maketrans(b"{}", b"[]")


def nesting_exceeds(raw: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests objects and arrays deeper than `limit` (brackets inside
    strings do not count)."""
    if isinstance(raw, str):  # a WebSocket text message: counted as it is, encoded if needed
        if raw.count("[") + raw.count("{") <= limit:
            return False
        raw = raw.encode()
    elif raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", raw).translate(_ONE_KIND, _NOT_BRACKETS)
    run = b"[" * (limit + 1)
    for peeled in range(limit + 1):
        if run in brackets:  # limit + 1 opened in a row, `peeled` levels already inside
            return True
        shorter = brackets.replace(b"[]", b"")  # one level: the innermost pairs
        if len(shorter) == len(brackets):
            return False  # empty, or unmatched brackets the decoder refuses
        if peeled == limit:
            return True  # a pair was left after `limit` levels were peeled
        brackets = shorter
        run = run[:-1]
    return False


def _too_deep(limit: int | None) -> msgspec.DecodeError:
    if limit is None:
        return msgspec.DecodeError("JSON nested too deeply")
    return msgspec.DecodeError(f"JSON nested deeper than {limit} levels")


class JsonDecoder(Generic[T]):
    """`msgspec.json.Decoder` for input from peers: nesting bounded by `max_depth` (None:
    only the interpreter's recursion limit, reported as a `DecodeError` too)."""

    __slots__ = ("_decoder", "max_depth")

    def __init__(self, type: Any = Any, *, max_depth: int | None = MAX_DEPTH) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type)
        self.max_depth = max_depth

    def decode(self, raw: bytes | str) -> T:
        """Decode `raw`; raises `msgspec.DecodeError` (malformed, or nested too deeply) or
        `msgspec.ValidationError` (wrong shape)."""
        limit = self.max_depth
        if limit is not None and nesting_exceeds(raw, limit):
            raise _too_deep(limit)
        try:
            return self._decoder.decode(raw)
        except RecursionError:
            raise _too_deep(limit) from None


_any: Final[JsonDecoder[Any]] = JsonDecoder()


def decode(raw: bytes | str) -> Any:
    """Decode a peer's JSON into Python values, nesting bounded by `MAX_DEPTH`."""
    return _any.decode(raw)
