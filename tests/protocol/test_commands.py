"""Inbound message decoding: every failure gets its own stable code and keeps the request id."""

from __future__ import annotations

import json

import pytest

from livepush.protocol.commands import (
    COMMANDS,
    CommandError,
    Heartbeat,
    Ping,
    Refresh,
    Since,
    Subscribe,
    Unsubscribe,
    WorkflowClosed,
    WorkflowOpened,
    decode_command,
    request_id_of,
)
from livepush.protocol.errors import ErrorCode, ProtocolError


def _decode_error(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_command(raw)
    return info.value


@pytest.mark.parametrize("raw", ["{", "", "not json", '{"type": "ping",}', b"\xff\xfe", "{'a': 1}"])
def test_invalid_json_refused_as_invalid_json(raw: str | bytes) -> None:
    assert _decode_error(raw).code is ErrorCode.INVALID_JSON


@pytest.mark.parametrize("raw", ["[]", '[{"type": "ping"}]', '"ping"', "42", "null", "true"])
def test_non_object_json_refused_as_invalid_message(raw: str) -> None:
    assert _decode_error(raw).code is ErrorCode.INVALID_MESSAGE


def test_missing_type_refused_as_invalid_message_keeping_request_id() -> None:
    error = _decode_error('{"id": 7, "channel": "workflow:1"}')
    assert isinstance(error, CommandError)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id == 7


@pytest.mark.parametrize("type_value", [1, None, True, ["ping"], {"a": "b"}])
def test_non_string_type_refused_as_invalid_message(type_value: object) -> None:
    error = _decode_error(json.dumps({"type": type_value, "id": "r1"}))
    assert isinstance(error, CommandError)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id == "r1"


@pytest.mark.parametrize("request_id", [5, "req-5"])
def test_unknown_type_refused_as_unknown_command_keeping_request_id(
    request_id: int | str,
) -> None:
    error = _decode_error(json.dumps({"type": "launchMissiles", "id": request_id}))
    assert isinstance(error, CommandError)
    assert error.code is ErrorCode.UNKNOWN_COMMAND
    assert error.request_id == request_id
    assert "launchMissiles" in error.message


def test_unknown_command_message_truncates_long_type() -> None:
    error = _decode_error(json.dumps({"type": "x" * 1000}))
    assert error.code is ErrorCode.UNKNOWN_COMMAND
    assert len(error.message) < 200


def test_server_message_types_are_not_commands() -> None:
    for server_type in ("reply", "error", "connected", "executionStarted"):
        assert _decode_error(json.dumps({"type": server_type})).code is ErrorCode.UNKNOWN_COMMAND


@pytest.mark.parametrize(
    ("message", "request_id"),
    [
        ({"type": "subscribe", "id": 1}, 1),
        ({"type": "subscribe", "id": "s", "channel": 5}, "s"),
        ({"type": "subscribe", "id": 2, "channel": "workflow:1", "since": {"epoch": "e"}}, 2),
        (
            {"type": "subscribe", "id": 3, "channel": "workflow:1", "since": {"offset": 1}},
            3,
        ),
        (
            {"type": "subscribe", "id": 4, "channel": "w", "since": {"epoch": "e", "offset": -1}},
            4,
        ),
        (
            {
                "type": "subscribe",
                "id": 5,
                "channel": "workflow:1",
                "since": {"epoch": "e" * 65, "offset": 1},
            },
            5,
        ),
        ({"type": "subscribe", "id": 6, "channel": "w", "since": "e|1"}, 6),
        ({"type": "unsubscribe", "id": 7}, 7),
        ({"type": "refresh", "id": 8}, 8),
        ({"type": "refresh", "id": 9, "token": "t" * 16385}, 9),
        ({"type": "workflowOpened", "id": 10}, 10),
        ({"type": "workflowOpened", "id": 11, "workflowId": 123}, 11),
        ({"type": "workflowClosed", "id": 12}, 12),
        ({"type": "ping", "id": 1.5}, None),
    ],
)
def test_schema_violations_refused_as_invalid_message_with_request_id(
    message: dict[str, object], request_id: object
) -> None:
    error = _decode_error(json.dumps(message))
    assert isinstance(error, CommandError)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id == request_id


def test_invalid_message_error_names_the_offending_field() -> None:
    error = _decode_error(
        json.dumps({"type": "subscribe", "channel": "w", "since": {"epoch": "e", "offset": -3}})
    )
    assert "since.offset" in error.message


def test_request_id_longer_than_64_characters_refused_without_echoing_it() -> None:
    error = _decode_error(json.dumps({"type": "ping", "id": "i" * 65}))
    assert isinstance(error, CommandError)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id is None


def test_boolean_request_id_refused_and_not_echoed() -> None:
    error = _decode_error(json.dumps({"type": "ping", "id": True}))
    assert isinstance(error, CommandError)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id is None


def test_request_id_of_accepts_only_ints_and_short_strings() -> None:
    assert request_id_of({"id": 3}) == 3
    assert request_id_of({"id": "abc"}) == "abc"
    assert request_id_of({"id": "a" * 64}) == "a" * 64
    assert request_id_of({"id": "a" * 65}) is None
    assert request_id_of({"id": True}) is None
    assert request_id_of({"id": 1.5}) is None
    assert request_id_of({"id": None}) is None
    assert request_id_of({}) is None
    assert request_id_of([1]) is None


def test_subscribe_decodes_channel_since_and_id() -> None:
    command = decode_command(
        '{"type":"subscribe","id":"r1","channel":"workflow:1","since":{"epoch":"ab","offset":3}}'
    )
    assert isinstance(command, Subscribe)
    assert command.id == "r1"
    assert command.channel == "workflow:1"
    assert command.since == Since(epoch="ab", offset=3)


def test_subscribe_without_since_has_none() -> None:
    command = decode_command(b'{"type":"subscribe","id":1,"channel":"workflow:1"}')
    assert isinstance(command, Subscribe)
    assert command.since is None
    assert command.id == 1


def test_since_offset_zero_accepted() -> None:
    command = decode_command(
        '{"type":"subscribe","channel":"workflow:1","since":{"epoch":"e","offset":0}}'
    )
    assert isinstance(command, Subscribe)
    assert command.since is not None
    assert command.since.offset == 0


def test_request_id_of_64_characters_accepted() -> None:
    command = decode_command(json.dumps({"type": "ping", "id": "i" * 64}))
    assert isinstance(command, Ping)
    assert command.id == "i" * 64


def test_unsubscribe_refresh_and_ping_decode() -> None:
    unsubscribe = decode_command('{"type":"unsubscribe","id":2,"channel":"execution:9"}')
    assert isinstance(unsubscribe, Unsubscribe)
    assert unsubscribe.channel == "execution:9"
    refresh = decode_command('{"type":"refresh","id":3,"token":"abc.def.ghi"}')
    assert isinstance(refresh, Refresh)
    assert refresh.token == "abc.def.ghi"
    ping = decode_command('{"type":"ping"}')
    assert isinstance(ping, Ping)
    assert ping.id is None


def test_n8n_flat_heartbeat_accepted_without_request_id() -> None:
    command = decode_command('{"type":"heartbeat"}')
    assert isinstance(command, Heartbeat)
    assert command.type == "heartbeat"
    assert command.id is None


def test_n8n_flat_workflow_opened_and_closed_accepted() -> None:
    opened = decode_command('{"type":"workflowOpened","workflowId":"wf-1"}')
    assert isinstance(opened, WorkflowOpened)
    assert opened.workflowId == "wf-1"
    closed = decode_command('{"type":"workflowClosed","workflowId":"wf-1"}')
    assert isinstance(closed, WorkflowClosed)
    assert closed.workflowId == "wf-1"


def test_unknown_extra_fields_are_ignored_for_n8n_compatibility() -> None:
    command = decode_command('{"type":"workflowOpened","workflowId":"w","pushRef":"x","ts":1}')
    assert isinstance(command, WorkflowOpened)


def test_every_catalogued_command_type_decodes_to_its_class() -> None:
    minimal: dict[str, dict[str, object]] = {
        "heartbeat": {},
        "ping": {},
        "subscribe": {"channel": "system"},
        "unsubscribe": {"channel": "system"},
        "refresh": {"token": "t"},
        "presence": {"channel": "workflow:1"},
        "workflowOpened": {"workflowId": "1"},
        "workflowClosed": {"workflowId": "1"},
        "executionSnapshot": {"executionId": "1"},
        "writeAccessRequested": {"workflowId": "1"},
        "writeAccessReleaseRequested": {"workflowId": "1"},
        "writeAccessHeartbeat": {"workflowId": "1"},
        "presenceUpdate": {"workflowId": "1", "state": {}},
        "ephemeral": {"workflowId": "1", "kind": "cursor"},
        "nodeLockRequested": {"workflowId": "1", "nodeId": "n"},
        "nodeLockReleased": {"workflowId": "1", "nodeId": "n"},
    }
    assert set(minimal) == set(COMMANDS)
    for name, fields in minimal.items():
        command = decode_command(json.dumps({"type": name, **fields}))
        assert type(command) is COMMANDS[name]
        assert command.type == name
