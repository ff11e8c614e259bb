"""Property tests of what peers send, decoded by pure code: whatever the input, the answer is
a `ProtocolError` with a stable code or a value, never another exception. A short run with a
fixed seed (`derandomize`), so the suite is repeatable; the long run against a live server is
`bench/fuzz.py`."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livepush.protocol.commands import COMMANDS, decode_command
from livepush.protocol.crdt import (
    MESSAGE_AWARENESS,
    MESSAGE_SYNC,
    decode_awareness,
    parse_message,
    parse_n8n_message,
    write_var_uint,
)
from livepush.protocol.decoding import decode
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.resume import format_positions, parse_positions

FIXED = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

CODES = {code.value for code in ErrorCode}

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)

#: Command-shaped objects: a known or unknown type, an id of any JSON type, random fields
#: under the names the commands use.
FIELDS = ["channel", "since", "token", "workflowId", "state", "kind", "data", "nodeId", "id"]
commands = st.fixed_dictionaries(
    {"type": st.sampled_from([*COMMANDS, "nope", ""]) | json_values},
    optional={name: json_values for name in FIELDS},
)


def refused_with_a_code(action: Any) -> None:
    """Run `action`: it returns, or raises `ProtocolError` with a known code."""
    code = None
    try:
        action()
    except ProtocolError as exc:
        code = exc.code.value
    assert code is None or code in CODES


@FIXED
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_any_bytes_as_a_command(raw: bytes | str) -> None:
    refused_with_a_code(lambda: decode_command(raw))


@FIXED
@given(commands)
def test_any_command_shaped_object(obj: dict[str, Any]) -> None:
    refused_with_a_code(lambda: decode_command(json.dumps(obj)))


@FIXED
@given(st.integers(min_value=1, max_value=3000), st.sampled_from("[{"))
def test_any_nesting(depth: int, bracket: str) -> None:
    closing = "]" if bracket == "[" else "}"
    opener = bracket if bracket == "[" else '{"a":'
    raw = '{"type":"presenceUpdate","workflowId":"1","state":' + opener * depth + "1"
    raw += closing * depth + "}"
    refused_with_a_code(lambda: decode_command(raw))


@FIXED
@given(st.binary(max_size=200))
def test_peer_json_decodes_or_is_malformed(raw: bytes) -> None:
    with contextlib.suppress(msgspec.DecodeError):
        decode(raw)


@FIXED
@given(st.text(max_size=200))
def test_any_resume_positions(value: str) -> None:
    refused_with_a_code(lambda: parse_positions(value))


channel_ids = st.from_regex(r"[A-Za-z0-9_.@=+\-]{1,20}", fullmatch=True)
positions = st.dictionaries(
    st.builds(
        lambda kind, ident: f"{kind}:{ident}", st.sampled_from(["workflow", "user"]), channel_ids
    ),
    st.tuples(st.from_regex(r"[a-z0-9]{1,16}", fullmatch=True), st.integers(0, 2**63 - 1)),
    max_size=5,
)


@FIXED
@given(positions)
def test_resume_positions_round_trip(value: dict[str, tuple[str, int]]) -> None:
    parsed = parse_positions(format_positions(value))  # type: ignore[arg-type]
    assert {k: tuple(v) for k, v in parsed.items()} == value


@FIXED
@given(st.binary(max_size=300))
def test_any_crdt_message(data: bytes) -> None:
    refused_with_a_code(lambda: parse_message(data))
    refused_with_a_code(lambda: parse_n8n_message(data))
    refused_with_a_code(lambda: decode_awareness(data))


@FIXED
@given(
    st.sampled_from([MESSAGE_SYNC, MESSAGE_AWARENESS]), st.integers(0, 5), st.binary(max_size=200)
)
def test_crdt_messages_with_a_valid_frame(kind: int, step: int, payload: bytes) -> None:
    """Well-framed messages with arbitrary contents reach the update and awareness decoders."""
    framed = write_var_uint(kind)
    if kind == MESSAGE_SYNC:
        framed += write_var_uint(step)
    framed += write_var_uint(len(payload)) + payload
    refused_with_a_code(lambda: parse_message(framed))
