"""Resume positions (`channel|epoch|offset,...`): the SSE event id and `lastEventId`."""

from __future__ import annotations

import pytest

from livepush.protocol.envelope import StreamPosition
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.resume import MAX_ENTRIES, format_positions, parse_positions


def test_format_positions_joins_entries_in_order() -> None:
    positions = {
        "workflow:1": StreamPosition("e1", 3),
        "execution:abc": StreamPosition("e2", 0),
        "system": StreamPosition("e3", 12),
    }
    assert format_positions(positions) == "workflow:1|e1|3,execution:abc|e2|0,system|e3|12"


def test_format_then_parse_roundtrips() -> None:
    positions = {
        "workflow:wf-1": StreamPosition("a1b2c3", 17),
        "user:alice@example.com": StreamPosition("ffff", 0),
        "push:tab_1": StreamPosition("0123456789ab", 99999999999),
        "system": StreamPosition("e", 1),
    }
    assert parse_positions(format_positions(positions)) == positions


def test_empty_positions_format_to_empty_string_and_back() -> None:
    assert format_positions({}) == ""
    assert parse_positions("") == {}


def test_blank_value_parses_to_no_positions() -> None:
    assert parse_positions("   ") == {}


def test_whitespace_around_entries_is_tolerated() -> None:
    assert parse_positions(" workflow:1|e|2 , workflow:2|e|3 ") == {
        "workflow:1": StreamPosition("e", 2),
        "workflow:2": StreamPosition("e", 3),
    }


def test_parsed_offsets_are_ints() -> None:
    parsed = parse_positions("workflow:1|e|42")
    assert parsed["workflow:1"].offset == 42
    assert isinstance(parsed["workflow:1"].offset, int)


def test_max_entries_accepted() -> None:
    value = ",".join(f"workflow:{i}|e|{i}" for i in range(MAX_ENTRIES))
    assert len(parse_positions(value)) == MAX_ENTRIES


def test_more_than_max_entries_refused_as_bad_request() -> None:
    value = ",".join(f"workflow:{i}|e|{i}" for i in range(MAX_ENTRIES + 1))
    with pytest.raises(ProtocolError) as info:
        parse_positions(value)
    assert info.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "value",
    [
        "workflow:1",
        "workflow:1|e",
        "workflow:1|e|1|2",
        "workflow:1||1",
        "workflow:1|e|",
        "workflow:1|e|x",
        "workflow:1|e|-1",
        "workflow:1|e|+1",
        "workflow:1|e|1.5",
        "workflow:1|e| 1x",
        "workflow:1|" + "e" * 65 + "|1",
        "workflow:1|e|1,",
        ",workflow:1|e|1",
        "workflow:1|e|1,,workflow:2|e|1",
        "workflow:1|e|1;workflow:2|e|1",
    ],
)
def test_malformed_positions_refused_as_bad_request(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_positions(value)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_epoch_of_64_characters_accepted() -> None:
    assert parse_positions("workflow:1|" + "e" * 64 + "|1")["workflow:1"].epoch == "e" * 64


@pytest.mark.parametrize("channel", ["nope:1", "workflow:a b", "workflow:"])
def test_positions_with_invalid_channel_refused(channel: str) -> None:
    # The channel check reports `invalid_channel` (not `bad_request`): it names the channel.
    with pytest.raises(ProtocolError) as info:
        parse_positions(f"{channel}|e|1")
    assert info.value.code is ErrorCode.INVALID_CHANNEL


def test_bad_entry_message_is_bounded() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_positions("workflow:1|e|" + "x" * 5000)
    assert len(info.value.message) < 300


@pytest.mark.parametrize("offset", ["²", "¹2", "٣"])
def test_non_ascii_digit_offsets_refused_as_bad_request(offset: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_positions(f"workflow:1|e|{offset}")
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_oversized_offset_refused_as_bad_request() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_positions("workflow:1|e|" + "9" * 5000)
    assert info.value.code is ErrorCode.BAD_REQUEST
