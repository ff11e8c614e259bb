"""The y-protocols codec: what clients send is decoded and checked in full, what the server
sends is what y-websocket reads."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Map, Text, create_sync_message, write_var_uint

from livepush.protocol.crdt import (
    EMPTY_UPDATE,
    MESSAGE_AWARENESS,
    MESSAGE_QUERY_AWARENESS,
    MESSAGE_SYNC,
    SYNC_STEP1,
    SYNC_STEP2,
    SYNC_UPDATE,
    AwarenessEntry,
    Dialect,
    MalformedMessage,
    adds_structs,
    decode_awareness,
    decode_state_vector,
    encode_awareness,
    parse_message,
    parse_n8n_message,
    permission_denied,
    sync_step1,
    sync_step2,
)


def _update() -> bytes:
    doc: Doc = Doc()
    doc.get("t", type=Text).insert(0, "hello")
    return doc.get_update()


def test_sync_messages_round_trip_with_pycrdt_encoding():
    doc: Doc = Doc()
    doc.get("m", type=Map)["k"] = "v"
    step1 = parse_message(create_sync_message(doc))
    assert (step1.kind, step1.step) == (MESSAGE_SYNC, SYNC_STEP1)
    assert decode_state_vector(step1.payload) == {doc.client_id: 1}
    update = doc.get_update()
    for encode, step in ((sync_step2, SYNC_STEP2), (Dialect.YJS.update, SYNC_UPDATE)):
        message = parse_message(encode(update))
        assert (message.kind, message.step, message.payload) == (MESSAGE_SYNC, step, update)
    assert parse_message(sync_step1(b"\x00")).payload == b"\x00"


def test_awareness_round_trip_keeps_unicode_states():
    entries = [AwarenessEntry(7, 3, '{"name":"Zoë ✓"}'), AwarenessEntry(2**40, 1, "null")]
    assert decode_awareness(encode_awareness(entries)) == entries
    assert entries[1].gone and not entries[0].gone
    message = parse_message(Dialect.YJS.awareness(encode_awareness(entries)))
    assert message.kind == MESSAGE_AWARENESS
    assert decode_awareness(message.payload) == entries


def test_query_awareness_has_no_body():
    assert parse_message(bytes((MESSAGE_QUERY_AWARENESS,))).kind == MESSAGE_QUERY_AWARENESS


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "truncated"),
        (b"\x00", "truncated"),
        (b"\x00\x01", "truncated"),
        (b"\x00\x01\x05ab", "shorter than its length"),
        (b"\x00\x07\x02\x00\x00", "unknown sync step"),
        (b"\x00\x02\x03abc", "not a Yjs update"),
        (b"\x00\x00\x02\x05\x01", "more entries than bytes"),
        (b"\x00\x00\x03\x01\x05\x80", "truncated"),
        (b"\x02\x00\x00", "server to clients"),
        (b"\x09", "unknown message type 9"),
        (b"\x01\x03\x01\x01\x01", "truncated"),
        (b"\x01\x05\x01\x01\x01\x01{", "not JSON"),
        (b"\x80\x80\x80", "truncated"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(data: bytes, words: str):
    def decode() -> None:
        message = parse_message(data)
        if message.kind == MESSAGE_AWARENESS:
            decode_awareness(message.payload)

    with pytest.raises(MalformedMessage) as caught:
        decode()
    assert words in caught.value.message
    assert caught.value.code.value == "invalid_message"


def test_a_truncated_update_inside_a_valid_frame_is_refused():
    update = _update()
    with pytest.raises(MalformedMessage, match="not a Yjs update"):
        parse_message(bytes((MESSAGE_SYNC, SYNC_UPDATE)) + write_var_uint(8) + update[:8])


def test_permission_denied_is_the_y_protocols_auth_message():
    assert permission_denied("read_only") == b"\x02\x00\x09read_only"


def test_adds_structs_tells_edits_from_deletions_and_empty_updates():
    assert adds_structs(_update())
    assert not adds_structs(EMPTY_UPDATE)
    doc: Doc = Doc()
    text = doc.get("t", type=Text)
    text += "abc"
    state = doc.get_state()
    del text[0:1]
    assert not adds_structs(doc.get_update(state))  # a deletion only


def test_n8n_framing_is_a_type_byte_and_a_raw_payload():
    update = _update()
    message = parse_n8n_message(b"\x00" + update)
    assert (message.kind, message.step, message.payload) == (MESSAGE_SYNC, SYNC_UPDATE, update)
    assert Dialect.N8N.update(update) == b"\x00" + update
    assert Dialect.N8N.awareness(b"\x01xyz") == b"\x01\x01xyz"
    assert parse_n8n_message(b"\x01\x00").kind == MESSAGE_AWARENESS
    for bad in (b"", b"\x00garbage", b"\x05"):
        with pytest.raises(MalformedMessage):
            parse_n8n_message(bad)
