"""Large node outputs sent in chunks (docs/protocol.md, "Large outputs"): reassembled by the
client into one `nodeExecuteAfterData`, checked (indexes, byte length, JSON, size limit), the
channel held behind them and its resume position kept before the marker until they are
complete. The pure assembler first, then the client driven through its connection path by a
scripted server (tests/client/fakes.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from livepush.client import OUTPUT_ERROR_TYPE, Client, Position
from livepush.client.outputs import (
    OUTPUT_CHUNK_MISSING,
    OUTPUT_INVALID_JSON,
    OUTPUT_INVALID_MARKER,
    OUTPUT_SIZE_MISMATCH,
    OUTPUT_TOO_LARGE,
    Assembly,
    OutputAssembler,
)
from tests.client.fakes import FakeServer, publication
from tests.client.support import eventually

pytestmark = pytest.mark.timeout(10)

CHANNEL = "execution:X"
PAYLOAD: dict[str, Any] = {
    "executionId": "X",
    "nodeName": "Code",
    "itemCountByConnectionType": {"main": [3]},
    "data": {"main": [[{"json": {"text": "héllo wörld ✓ " * 50, "i": i}} for i in range(3)]]},
}


def chunked(
    offset: int,
    payload: Any = PAYLOAD,
    pieces: int = 4,
    *,
    channel: str = CHANNEL,
    output_id: str = "out-1",
    size: int | None = None,
    epoch: str = "e1",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A marker publication and its chunk messages (split on characters, so multi-byte
    characters make byte and character counts differ)."""
    text = json.dumps(payload, ensure_ascii=False)
    step = -(-len(text) // pieces)
    parts = [text[i : i + step] for i in range(0, len(text), step)]
    marker = publication(
        channel,
        offset,
        "executionOutput",
        {
            "executionId": "X",
            "nodeName": "Code",
            "executionIndex": 3,
            "itemCountByConnectionType": {"main": [3]},
            "bytes": len(text.encode()) if size is None else size,
            "delivery": "chunks",
            "url": "/api/v1/executions/X/nodes/Code/output?executionIndex=3",
            "outputId": output_id,
        },
        epoch,
    )
    chunks = [
        {
            "type": "executionOutputChunk",
            "data": {
                "outputId": output_id,
                "channel": channel,
                "offset": offset,
                "index": index,
                "final": index == len(parts) - 1,
                "text": part,
            },
        }
        for index, part in enumerate(parts)
    ]
    return marker, chunks


# -- the assembler alone ---------------------------------------------------------------------


def begin(assembler: OutputAssembler[str], marker: dict[str, Any]) -> tuple[str, str] | None:
    return assembler.begin(marker["channel"], marker["offset"], marker["epoch"], marker)


def test_assembler_joins_the_chunks_and_releases_what_waited_in_order() -> None:
    assembler: OutputAssembler[str] = OutputAssembler()
    marker, chunks = chunked(5)
    assert len(chunks) == 4
    assert begin(assembler, marker) is None
    assert assembler.holding(CHANNEL) and not assembler.holding("workflow:1")
    assert assembler.pins() == {CHANNEL: Position("e1", 4)}
    assembler.hold(CHANNEL, "pub 6")
    for chunk in chunks[:-1]:
        assert assembler.feed(chunk["data"]) == []
    released = assembler.feed(chunks[-1]["data"])
    assert len(released) == 2 and released[1] == "pub 6"
    done = released[0]
    assert isinstance(done, Assembly) and done.error is None
    assert done.data == PAYLOAD
    assert not assembler.holding(CHANNEL) and assembler.pins() == {}
    assert assembler.feed(chunks[0]["data"]) == []  # a late chunk of a finished output


def test_assembler_second_output_waits_for_the_first_even_if_complete_first() -> None:
    assembler: OutputAssembler[str] = OutputAssembler()
    first, first_chunks = chunked(5, {"n": 1}, 2, output_id="a")
    second, second_chunks = chunked(6, {"n": 2}, 2, output_id="b")
    begin(assembler, first)
    assembler.hold(CHANNEL, "between")
    begin(assembler, second)
    assembler.hold(CHANNEL, "after")
    for chunk in second_chunks:
        assert assembler.feed(chunk["data"]) == []  # complete, but behind the first
    assert assembler.pins() == {CHANNEL: Position("e1", 4)}
    assembler.feed(first_chunks[0]["data"])
    released = assembler.feed(first_chunks[1]["data"])
    assert [r.data if isinstance(r, Assembly) else r for r in released] == [
        {"n": 1},
        "between",
        {"n": 2},
        "after",
    ]


@pytest.mark.parametrize("skip", [1, 2])
def test_assembler_refuses_a_missing_chunk(skip: int) -> None:
    assembler: OutputAssembler[str] = OutputAssembler()
    marker, chunks = chunked(5)
    begin(assembler, marker)
    assembler.hold(CHANNEL, "pub 6")
    released: list[Any] = []
    for index, chunk in enumerate(chunks):
        if index != skip:
            released.extend(assembler.feed(chunk["data"]))
    assert len(released) == 2 and released[1] == "pub 6"
    assert isinstance(released[0], Assembly) and released[0].data is None
    code, message = released[0].error or ("", "")
    assert code == OUTPUT_CHUNK_MISSING
    assert f"expected chunk {skip}, got {skip + 1}" in message


def test_assembler_refuses_a_repeated_chunk() -> None:
    assembler: OutputAssembler[str] = OutputAssembler()
    marker, chunks = chunked(5)
    begin(assembler, marker)
    assembler.feed(chunks[0]["data"])
    released = assembler.feed(chunks[0]["data"])
    assert isinstance(released[0], Assembly)
    assert released[0].error is not None and released[0].error[0] == OUTPUT_CHUNK_MISSING


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_assembler_refuses_a_wrong_byte_length(delta: int) -> None:
    real = len(json.dumps(PAYLOAD, ensure_ascii=False).encode())
    assembler: OutputAssembler[str] = OutputAssembler()
    marker, chunks = chunked(5, size=real + delta)
    begin(assembler, marker)
    released: list[Any] = []
    for chunk in chunks:
        released.extend(assembler.feed(chunk["data"]))
    assert len(released) == 1 and isinstance(released[0], Assembly)
    assert released[0].data is None
    assert released[0].error is not None and released[0].error[0] == OUTPUT_SIZE_MISMATCH


def test_assembler_stops_collecting_as_soon_as_the_announced_size_is_passed() -> None:
    # memory bound: never more than the marker's `bytes` (plus one chunk) is kept
    assembler: OutputAssembler[str] = OutputAssembler()
    marker, chunks = chunked(5, size=10)
    begin(assembler, marker)
    released = assembler.feed(chunks[0]["data"])
    assert len(released) == 1 and isinstance(released[0], Assembly)
    assert released[0].parts == [] and released[0].error is not None
    assert released[0].error[0] == OUTPUT_SIZE_MISMATCH
    assert "more than the announced 10" in released[0].error[1]
    assert [assembler.feed(chunk["data"]) for chunk in chunks[1:]] == [[], [], []]


def test_assembler_counts_utf8_bytes_not_characters() -> None:
    # Characters and bytes differ by far more than the `delta`s above: a character count
    # would be refused, the byte count is accepted.
    text = json.dumps(PAYLOAD, ensure_ascii=False)
    assert len(text.encode()) - len(text) > 100
    assembler: OutputAssembler[str] = OutputAssembler()
    marker, chunks = chunked(5, size=len(text.encode()))
    begin(assembler, marker)
    released = [r for chunk in chunks for r in assembler.feed(chunk["data"])]
    assert isinstance(released[0], Assembly) and released[0].error is None


def test_assembler_reports_the_servers_error_chunk() -> None:
    assembler: OutputAssembler[str] = OutputAssembler()
    marker, chunks = chunked(5)
    begin(assembler, marker)
    assembler.hold(CHANNEL, "pub 6")
    assert assembler.feed(chunks[0]["data"]) == []
    stop = {
        **chunks[1]["data"],
        "final": True,
        "text": "",
        "error": {"code": "output_not_found", "message": "the output is no longer stored"},
    }
    released = assembler.feed(stop)
    assert len(released) == 2 and isinstance(released[0], Assembly)
    assert released[0].error is not None
    assert released[0].error[0] == "output_not_found"
    assert "no longer stored" in released[0].error[1]


def test_assembler_refuses_invalid_json() -> None:
    assembler: OutputAssembler[str] = OutputAssembler()
    marker, chunks = chunked(5)
    chunks[-1]["data"]["text"] = chunks[-1]["data"]["text"][:-1] + "]"  # same byte length
    begin(assembler, marker)
    released = [r for chunk in chunks for r in assembler.feed(chunk["data"])]
    assert isinstance(released[0], Assembly)
    assert released[0].error is not None and released[0].error[0] == OUTPUT_INVALID_JSON


def test_assembler_refuses_an_output_over_the_limit_and_a_bad_marker() -> None:
    marker, _ = chunked(5)
    size = marker["data"]["bytes"]
    assert begin(OutputAssembler(max_bytes=size), marker) is None
    assembler: OutputAssembler[str] = OutputAssembler(max_bytes=size - 1)
    refused = begin(assembler, marker)
    assert refused is not None and refused[0] == OUTPUT_TOO_LARGE
    assert str(size) in refused[1]
    assert not assembler.holding(CHANNEL)
    del marker["data"]["outputId"]
    refused = begin(OutputAssembler(), marker)
    assert refused is not None and refused[0] == OUTPUT_INVALID_MARKER


def test_assembler_discard_returns_the_pins_and_forgets_everything() -> None:
    assembler: OutputAssembler[str] = OutputAssembler()
    marker, chunks = chunked(5)
    begin(assembler, marker)
    assembler.hold(CHANNEL, "pub 6")
    assembler.feed(chunks[0]["data"])
    assert assembler.discard() == {CHANNEL: Position("e1", 4)}
    assert not assembler.holding(CHANNEL) and assembler.pins() == {}
    assert assembler.feed(chunks[1]["data"]) == []


# -- the client ------------------------------------------------------------------------------


def make_client(**options: Any) -> tuple[Client, FakeServer]:
    client = Client(
        "http://127.0.0.1:9/base",
        token="token",
        push_ref="tab1",
        channels=[CHANNEL],
        backoff_base=0,
        backoff_cap=0,
        heartbeat=None,
        **options,
    )
    return client, FakeServer(client, options.pop("transport", "websocket"))


def seen(server: FakeServer) -> list[tuple[str, str | None, int | None]]:
    """(type, channel, offset) of what listeners received, server messages aside."""
    return [(m.type, m.channel, m.offset) for m in server.messages if m.type not in ("connected",)]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_client_delivers_one_reassembled_output_and_holds_the_channel(
    transport: Any,
) -> None:
    client, server = make_client(transport=transport)
    by_channel: list[Any] = []
    client.on_channel(CHANNEL, by_channel.append)
    await client.connect()
    marker, chunks = chunked(2)
    server.push(publication(CHANNEL, 1))
    server.push(marker)
    server.push(publication(CHANNEL, 3))  # held behind the output
    server.push(publication("workflow:9", 1))  # another channel: not held
    for chunk in chunks[:-1]:
        server.push(chunk)
    server.push(publication("workflow:9", 2))
    await eventually(lambda: len(server.messages) == 4, what="the first messages")
    assert seen(server) == [
        ("tick", CHANNEL, 1),
        ("tick", "workflow:9", 1),
        ("tick", "workflow:9", 2),
    ]
    # not resumed past the marker while its output is incomplete
    assert client.positions[CHANNEL] == Position("e1", 1)

    server.push(chunks[-1])
    await eventually(lambda: len(server.messages) == 6, what="the output and what waited")
    assert seen(server)[3:] == [("nodeExecuteAfterData", CHANNEL, 2), ("tick", CHANNEL, 3)]
    output = server.messages[4]
    assert output.data == PAYLOAD
    assert output.epoch == "e1" and output.position == Position("e1", 2)
    assert output.raw["marker"]["data"]["outputId"] == "out-1"
    assert [m.offset for m in by_channel] == [1, 2, 3]
    assert client.positions[CHANNEL] == Position("e1", 3)
    assert not server.of_type("executionOutputChunk", "executionOutput")
    assert client.stats.outputs_reassembled == 1 and client.stats.delivered == 5
    assert client.stats.recovery_failures == 0
    await client.close()


async def test_client_reconnect_mid_output_discards_it_and_resumes_before_the_marker() -> None:
    client, server = make_client()
    await client.connect()
    marker, chunks = chunked(2)
    server.push(publication(CHANNEL, 1))
    server.push(marker)
    server.push(chunks[0])
    server.push(chunks[1])
    server.push(publication(CHANNEL, 3))
    await eventually(lambda: len(server.messages) == 2, what="offset 1")
    first = server.current
    first.cut()
    await eventually(lambda: len(server.connections) == 2, what="a reconnect")
    # the handshake resumed from just before the marker, not from 3
    assert server.handshakes[1]["lastEventId"].count(f"{CHANNEL}|e1|1") == 1
    await eventually(lambda: client.state == "connected", what="connected again")
    # the server sends the marker, all its chunks, and what followed, again
    server.push(marker)
    for chunk in chunks:
        server.push(chunk)
    server.push(publication(CHANNEL, 3))
    server.push(publication(CHANNEL, 4))
    await eventually(lambda: len(server.of_type("tick")) == 3, what="offset 4")
    assert [(t, o) for t, c, o in seen(server) if c == CHANNEL] == [
        ("tick", 1),
        ("nodeExecuteAfterData", 2),
        ("tick", 3),
        ("tick", 4),
    ]
    assert server.of_type("nodeExecuteAfterData")[0].data == PAYLOAD
    assert not server.of_type(OUTPUT_ERROR_TYPE)
    assert client.positions[CHANNEL] == Position("e1", 4)
    assert client.stats.recovery_failures == 0 and client.stats.outputs_reassembled == 1
    await client.close()


async def test_client_positions_stay_before_the_marker_until_the_last_chunk() -> None:
    client, server = make_client()
    await client.connect()
    marker, chunks = chunked(1)
    server.push(marker)
    for offset in range(2, 5):
        server.push(publication(CHANNEL, offset))
    for chunk in chunks[:-1]:
        server.push(chunk)
    server.push({"type": "ping-probe", "data": {}, "channel": "workflow:9"})
    await eventually(lambda: server.of_type("ping-probe") != [], what="everything read")
    assert client.positions[CHANNEL] == Position("e1", 0)
    assert client._handshake_params()["lastEventId"].count(f"{CHANNEL}|e1|0") == 1
    server.push(chunks[-1])
    await eventually(lambda: len(server.of_type("tick")) == 3, what="the held ticks")
    assert client.positions[CHANNEL] == Position("e1", 4)
    await client.close()


@pytest.mark.parametrize(
    ("damage", "code"),
    [("drop", OUTPUT_CHUNK_MISSING), ("size", OUTPUT_SIZE_MISMATCH)],
)
async def test_client_emits_an_error_instead_of_a_corrupt_output(damage: str, code: str) -> None:
    client, server = make_client()
    await client.connect()
    real = len(json.dumps(PAYLOAD, ensure_ascii=False).encode())
    marker, chunks = chunked(1, size=real - 3 if damage == "size" else None)
    if damage == "drop":
        del chunks[2]
    server.push(marker)
    server.push(publication(CHANNEL, 2))
    for chunk in chunks:
        server.push(chunk)
    await eventually(lambda: len(server.of_type("tick")) == 1, what="the held tick")
    assert [m.type for m in server.messages[1:]] == [OUTPUT_ERROR_TYPE, "tick"]
    error = server.messages[1]
    assert error.channel == CHANNEL and error.offset == 1 and error.epoch == "e1"
    assert error.data["code"] == code
    assert error.data["url"] == marker["data"]["url"]  # can still be fetched
    assert error.data["output"]["outputId"] == "out-1"
    assert not server.of_type("nodeExecuteAfterData")
    assert client.stats.output_errors == 1
    assert client.positions[CHANNEL] == Position("e1", 2)
    await client.close()


async def test_client_refuses_an_output_over_its_limit() -> None:
    marker, chunks = chunked(1)
    client, server = make_client(max_output_bytes=marker["data"]["bytes"] - 1)
    await client.connect()
    server.push(marker)
    for chunk in chunks:
        server.push(chunk)  # ignored: the output was refused
    server.push(publication(CHANNEL, 2))
    await eventually(lambda: len(server.of_type("tick")) == 1, what="the next tick")
    assert [m.type for m in server.messages[1:]] == [OUTPUT_ERROR_TYPE, "tick"]
    assert server.messages[1].data["code"] == OUTPUT_TOO_LARGE
    assert client.positions[CHANNEL] == Position("e1", 2)
    await client.close()


async def test_client_delivers_reference_markers_as_they_are() -> None:
    client, server = make_client()
    await client.connect()
    marker, _ = chunked(1)
    marker["data"]["delivery"] = "reference"
    server.push(marker)
    await eventually(lambda: len(server.messages) == 2, what="the marker")
    assert server.messages[1].type == "executionOutput"
    assert server.messages[1].data == marker["data"]
    assert client.positions[CHANNEL] == Position("e1", 1)
    await client.close()


async def test_channel_reset_abandons_the_output_and_releases_the_channel() -> None:
    client, server = make_client()
    recoveries: list[tuple[str, Position]] = []
    client.on_recovery_failed(lambda channel, position: recoveries.append((channel, position)))
    await client.connect()
    marker, chunks = chunked(1)
    server.push(marker)
    server.push(publication(CHANNEL, 2))
    server.push(chunks[0])
    server.push({"type": "channelReset", "data": {"channel": CHANNEL, "epoch": "e2", "offset": 0}})
    server.push(publication(CHANNEL, 1, epoch="e2"))
    await eventually(lambda: len(server.of_type("tick")) == 2, what="both ticks")
    assert [(m.type, m.offset) for m in server.messages[1:]] == [
        (OUTPUT_ERROR_TYPE, 1),
        ("tick", 2),
        ("channelReset", None),
        ("tick", 1),
    ]
    assert server.messages[1].data["code"] == "output_abandoned"
    assert recoveries == [(CHANNEL, Position("e2", 0))]
    assert client.positions[CHANNEL] == Position("e2", 1)
    await client.close()
