"""Server-to-client envelopes: the bytes clients receive, and what publishers may send."""

from __future__ import annotations

import json

import pytest

from livepush.protocol.catalogue import KNOWN_TYPES, metric_label
from livepush.protocol.envelope import (
    CONTROL_TYPES,
    RESERVED_TYPES,
    Priority,
    Publication,
    StreamPosition,
    compact_raw_object,
    control_message,
    encode_data,
    error_message,
    validate_type,
)
from livepush.protocol.errors import ErrorCode, ProtocolError


def test_reliable_publication_payload_is_exactly_the_json_envelope() -> None:
    data = {"executionId": "42", "nested": {"list": [1, 2, None], "text": 'quote " and \n'}}
    publication = Publication(
        "execution:42", "nodeExecuteAfter", encode_data(data), offset=7, epoch="abc123"
    )
    assert json.loads(publication.payload) == {
        "type": "nodeExecuteAfter",
        "data": data,
        "channel": "execution:42",
        "offset": 7,
        "epoch": "abc123",
    }


def test_payload_starts_with_n8n_type_and_data_fields() -> None:
    publication = Publication("workflow:1", "workflowUpdated", b'{"a":1}', offset=1, epoch="e")
    assert publication.payload.startswith(b'{"type":"workflowUpdated","data":{"a":1}')
    assert b"\n" not in publication.payload


def test_ephemeral_publication_has_no_offset_or_epoch() -> None:
    publication = Publication(
        "workflow:1", "collaboratorsChanged", b'{"users":[]}', priority=Priority.EPHEMERAL, key="k"
    )
    envelope = json.loads(publication.payload)
    assert envelope == {
        "type": "collaboratorsChanged",
        "data": {"users": []},
        "channel": "workflow:1",
    }
    assert "offset" not in envelope
    assert "epoch" not in envelope
    assert publication.position is None


def test_unplaced_reliable_publication_has_no_position() -> None:
    publication = Publication("workflow:1", "x", b"{}")
    assert publication.position is None
    assert publication.priority is Priority.RELIABLE
    assert "offset" not in json.loads(publication.payload)


def test_placed_publication_reports_its_stream_position() -> None:
    publication = Publication("workflow:1", "x", b"{}", offset=3, epoch="ep")
    assert publication.position == StreamPosition("ep", 3)


def test_with_position_returns_placed_copy_and_leaves_original_untouched() -> None:
    original = Publication(
        "workflow:1",
        "workflowUpdated",
        b'{"v":2}',
        priority=Priority.RELIABLE,
        key="k1",
        published_at=1234.5,
    )
    placed = original.with_position(9, "beef")
    assert placed is not original
    assert (placed.offset, placed.epoch) == (9, "beef")
    assert placed.position == StreamPosition("beef", 9)
    assert (placed.channel, placed.type, placed.data) == (
        original.channel,
        original.type,
        b'{"v":2}',
    )
    assert placed.key == "k1"
    assert placed.priority is Priority.RELIABLE
    assert placed.published_at == 1234.5
    assert json.loads(placed.payload)["offset"] == 9
    assert json.loads(placed.payload)["epoch"] == "beef"
    assert original.offset is None
    assert original.position is None
    assert "offset" not in json.loads(original.payload)


def test_publication_records_publish_time_when_not_given() -> None:
    publication = Publication("system", "x", b"{}")
    assert publication.published_at > 1_600_000_000
    assert publication.ws_frame is None
    assert publication.sse_data is None


@pytest.mark.parametrize(
    "message_type",
    ["a", "executionStarted", "my.custom:type-1_2", "A" + "b" * 63, "x:y", "n8n.event"],
)
def test_validate_type_accepts_publishable_types(message_type: str) -> None:
    assert validate_type(message_type) == message_type


@pytest.mark.parametrize("message_type", sorted(RESERVED_TYPES))
def test_validate_type_refuses_server_reserved_types(message_type: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_type(message_type)
    assert info.value.code is ErrorCode.INVALID_MESSAGE
    assert "reserved" in info.value.message


@pytest.mark.parametrize(
    "message_type",
    ["", "1abc", "_abc", "-abc", "a b", 'a"b', "a\nb", "a|b", "a,b", "a/b", "é", "a" * 65, None, 3],
)
def test_validate_type_refuses_bad_characters_and_lengths(message_type: object) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_type(message_type)
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_encode_data_encodes_objects_once() -> None:
    assert json.loads(encode_data({"a": [1, "b"], "c": None})) == {"a": [1, "b"], "c": None}


@pytest.mark.parametrize("data", [[1, 2], "text", 3, None, True])
def test_encode_data_refuses_non_objects(data: object) -> None:
    with pytest.raises(ProtocolError) as info:
        encode_data(data)
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_encode_data_refuses_unencodable_values_as_invalid_message() -> None:
    with pytest.raises(ProtocolError) as info:
        encode_data({"when": object()})
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_compact_raw_object_removes_newlines_and_keeps_the_value() -> None:
    raw = b'{\n  "a": 1,\r\n  "b": "x y",\n  "c": [1,\n 2]\n}\n'
    compacted = compact_raw_object(raw)
    assert b"\n" not in compacted
    assert b"\r" not in compacted
    assert json.loads(compacted) == {"a": 1, "b": "x y", "c": [1, 2]}


def test_compact_raw_object_keeps_escaped_newlines_inside_strings() -> None:
    raw = b'{\n"text": "line1\\nline2"\n}'
    assert json.loads(compact_raw_object(raw)) == {"text": "line1\nline2"}


def test_compact_raw_object_returns_single_line_object_as_is_without_surrounding_space() -> None:
    assert compact_raw_object(b'  {"a": 1}  ') == b'{"a": 1}'


@pytest.mark.parametrize("raw", [b"[1,2]", b'"text"', b"42", b"null", b"", b"   ", b"\n[\n1\n]"])
def test_compact_raw_object_refuses_non_objects(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        compact_raw_object(raw)
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_control_message_puts_request_id_between_type_and_data() -> None:
    encoded = control_message("reply", {"ok": True}, "r1")
    assert encoded == b'{"type":"reply","id":"r1","data":{"ok":true}}'
    assert json.loads(control_message("connected", {"pushRef": "p"})) == {
        "type": "connected",
        "data": {"pushRef": "p"},
    }


def test_error_message_carries_stable_code_and_request_id() -> None:
    encoded = json.loads(error_message(ErrorCode.FORBIDDEN, "no access", 4))
    assert encoded == {
        "type": "error",
        "id": 4,
        "data": {"code": "forbidden", "message": "no access"},
    }


def test_metric_label_bounds_cardinality_to_known_types() -> None:
    assert metric_label("executionStarted") == "executionStarted"
    assert metric_label("reply") == "reply"
    assert metric_label("somethingCustom") == "other"
    assert RESERVED_TYPES <= KNOWN_TYPES


def test_control_types_are_reserved_and_feature_types_are_not_control() -> None:
    assert CONTROL_TYPES <= RESERVED_TYPES
    assert {"reply", "error", "connected", "executionOutputChunk"} <= CONTROL_TYPES
    # publications a client delivers to channel listeners, though only the server sends them
    assert not {"executionStream", "executionOutput", "nodeLocked"} & CONTROL_TYPES
