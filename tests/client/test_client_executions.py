"""Executions on the client side (docs/protocol.md, "Executions"): `execution_snapshot`, the
channels the server subscribes a connection to by itself (`executionStream` ... `unsubscribed`),
and `fetch_output`. Driven through the client's connection path by a scripted server
(tests/client/fakes.py); `fetch_output` against a small aiohttp application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from livepush.client import Client, CommandError, OutputFetchError, Position
from tests.client.fakes import FakeServer, publication, reply
from tests.client.support import eventually
from tests.client.test_client_outputs import chunked

pytestmark = pytest.mark.timeout(10)

SNAPSHOT = {"executionId": "X", "status": "running", "nodes": []}


def make_client(url: str = "http://127.0.0.1:9", **options: Any) -> tuple[Client, FakeServer]:
    transport = options.get("transport", "websocket")
    client = Client(
        url,
        token="token",
        push_ref="tab1",
        backoff_base=0,
        backoff_cap=0,
        heartbeat=None,
        **options,
    )
    return client, FakeServer(client, transport)


def answer_snapshots(server: FakeServer, offset: int = 5) -> None:
    def respond(command: dict[str, Any]) -> dict[str, Any]:
        execution_id = command["executionId"]
        if execution_id != "X":
            return {
                "type": "error",
                "id": command["id"],
                "data": {"code": "execution_not_found", "message": "no such execution"},
            }
        return reply(
            command,
            {
                "executionId": "X",
                "channel": "execution:X",
                "epoch": "e1",
                "offset": offset,
                "snapshot": SNAPSHOT,
            },
        )

    server.responders["executionSnapshot"] = respond


def ticks(server: FakeServer, channel: str) -> list[int | None]:
    return [m.offset for m in server.messages if m.channel == channel and m.type == "tick"]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_execution_snapshot_subscribes_from_the_snapshot_offset(transport: Any) -> None:
    client, server = make_client(transport=transport)
    answer_snapshots(server)
    await client.connect()
    data = await client.execution_snapshot("X")
    assert data == {
        "executionId": "X",
        "channel": "execution:X",
        "epoch": "e1",
        "offset": 5,
        "snapshot": SNAPSHOT,
    }
    assert server.current.sent[-1] == {"type": "executionSnapshot", "id": 1, "executionId": "X"}
    assert client.channels == ["execution:X"]
    assert client.positions["execution:X"] == Position("e1", 5)
    # already in the snapshot: dropped; after it: delivered
    for offset in (4, 5, 6, 7):
        server.push(publication("execution:X", offset))
    await eventually(lambda: ticks(server, "execution:X") == [6, 7], what="offsets 6 and 7")
    assert client.stats.duplicates_dropped == 2 and client.stats.recovery_failures == 0

    # resumed on reconnect like any subscription
    server.current.cut()
    await eventually(lambda: len(server.handshakes) == 2, what="a reconnect")
    assert server.handshakes[1]["channels"] == "execution:X"
    assert "execution:X|e1|7" in server.handshakes[1]["lastEventId"].split(",")
    await client.close()


async def test_execution_snapshot_errors_raise_and_leave_nothing_tracked() -> None:
    client, server = make_client()
    answer_snapshots(server)
    await client.connect()
    with pytest.raises(CommandError) as caught:
        await client.execution_snapshot("nope")
    assert caught.value.code == "execution_not_found"
    assert caught.value.command == "executionSnapshot"
    assert client.channels == [] and "execution:nope" not in client.positions
    await client.close()


async def test_execution_snapshot_never_moves_a_channel_back() -> None:
    client, server = make_client(channels=["execution:X"])
    answer_snapshots(server, offset=5)
    await client.connect()
    for offset in range(1, 9):
        server.push(publication("execution:X", offset))
    await eventually(lambda: len(ticks(server, "execution:X")) == 8, what="8 ticks")
    await client.execution_snapshot("X")
    assert client.positions["execution:X"] == Position("e1", 8)
    server.push(publication("execution:X", 6))
    server.push(publication("execution:X", 9))
    await eventually(lambda: len(ticks(server, "execution:X")) == 9, what="offset 9")
    assert ticks(server, "execution:X")[-1] == 9
    await client.close()


def stream_notice(offset: int, execution: str = "X") -> dict[str, Any]:
    return publication(
        "push:tab1",
        offset,
        "executionStream",
        {
            "executionId": execution,
            "workflowId": "W",
            "channel": f"execution:{execution}",
            "epoch": "e1",
        },
    )


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_followed_execution_is_tracked_resumed_and_ended_by_the_server(
    transport: Any,
) -> None:
    client, server = make_client(transport=transport)
    unsubscribed: list[Any] = []
    client.on("unsubscribed", unsubscribed.append)
    await client.connect()
    server.push(stream_notice(1))
    for offset in (1, 2, 3):
        server.push(publication("execution:X", offset))
    await eventually(lambda: ticks(server, "execution:X") == [1, 2, 3], what="3 events")
    assert client.followed == ["execution:X"] and client.channels == []
    assert client.positions["execution:X"] == Position("e1", 3)

    server.current.cut()
    await eventually(lambda: len(server.handshakes) == 2, what="a reconnect")
    assert server.handshakes[1]["channels"] == "execution:X"
    assert "execution:X|e1|3" in server.handshakes[1]["lastEventId"].split(",")
    await eventually(lambda: client.state == "connected", what="connected again")
    assert client.followed == ["execution:X"] and client.channels == []
    server.push(publication("execution:X", 3))  # replayed once too often: dropped
    server.push(publication("execution:X", 4, "executionFinished"))
    server.push(
        {
            "type": "unsubscribed",
            "data": {
                "channel": "execution:X",
                "code": "execution_finished",
                "message": "the execution finished",
            },
        }
    )
    await eventually(lambda: len(unsubscribed) == 1, what="unsubscribed")
    assert unsubscribed[0].data["code"] == "execution_finished"
    assert ticks(server, "execution:X") == [1, 2, 3]
    assert [m.type for m in server.messages][-2:] == ["executionFinished", "unsubscribed"]
    assert client.followed == [] and "execution:X" not in client.positions
    assert "execution:X" not in client._handshake_params().get("lastEventId", "")
    await client.close()


async def test_follow_from_the_first_event_drops_nothing_and_keeps_a_further_position() -> None:
    client, server = make_client(channels=["execution:X"])
    await client.connect()
    server.push(publication("execution:X", 1))
    server.push(publication("execution:X", 2))
    server.push(stream_notice(1))  # already subscribed and further: stays at 2
    server.push(publication("execution:X", 3))
    await eventually(lambda: ticks(server, "execution:X") == [1, 2, 3], what="3 events")
    assert client.positions["execution:X"] == Position("e1", 3)
    assert client.channels == ["execution:X"] and client.followed == []

    server.push(stream_notice(2, "Y"))
    await eventually(lambda: "execution:Y" in client.positions, what="Y followed")
    assert client.positions["execution:Y"] == Position("e1", 0)  # from its first event
    await client.close()


async def test_unsubscribed_waits_behind_an_output_being_reassembled() -> None:
    client, server = make_client()
    await client.connect()
    server.push(stream_notice(1))
    marker, chunks = chunked(1)
    server.push(marker)
    server.push(publication("execution:X", 2, "executionFinished"))
    server.push({"type": "unsubscribed", "data": {"channel": "execution:X", "code": "x"}})
    server.push(chunks[0])
    server.push({"type": "probe", "data": {}, "channel": "workflow:9"})
    await eventually(lambda: server.of_type("probe") != [], what="everything read")
    # still waiting for the output: the channel is still resumable, before the marker
    assert client.positions["execution:X"] == Position("e1", 0)
    assert not server.of_type("unsubscribed")
    for chunk in chunks[1:]:
        server.push(chunk)
    await eventually(lambda: server.of_type("unsubscribed") != [], what="unsubscribed")
    assert [m.type for m in server.messages if m.channel in ("execution:X", None)][-3:] == [
        "nodeExecuteAfterData",
        "executionFinished",
        "unsubscribed",
    ]
    assert "execution:X" not in client.positions and client.followed == []
    await client.close()


# -- fetch_output ----------------------------------------------------------------------------


@pytest.fixture
async def output_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server under `/base` answering output downloads; records the requests."""
    requests: list[dict[str, Any]] = []

    async def output(request: web.Request) -> web.Response:
        requests.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "authorization": request.headers.get("Authorization"),
                "x-extra": request.headers.get("X-Extra"),
            }
        )
        if request.match_info["node"] == "Gone":
            return web.json_response(
                {"error": {"code": "output_not_found", "message": "expired"}}, status=404
            )
        if request.match_info["node"] == "Text":
            return web.Response(text="not json")
        return web.json_response({"node": request.match_info["node"], "items": [1, 2, 3]})

    app = web.Application()
    app.router.add_get("/base/api/v1/executions/{id}/nodes/{node}/output", output)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/base", requests
    finally:
        await runner.cleanup()


async def test_fetch_output_by_reference_marker_with_the_current_token(
    output_server: tuple[str, list[dict[str, Any]]],
) -> None:
    base, requests = output_server
    tokens = iter(["first-token", "second-token"])
    client = Client(
        base + "/", token=lambda: next(tokens), push_ref="tab1", heartbeat=None,
        headers={"X-Extra": "yes"},
    )  # fmt: skip
    server = FakeServer(client)
    await client.connect()
    marker, _ = chunked(1)
    marker["data"]["delivery"] = "reference"
    server.push(marker)
    await eventually(lambda: server.of_type("executionOutput") != [], what="the marker")
    result = await client.fetch_output(server.of_type("executionOutput")[0])
    assert result == {"node": "Code", "items": [1, 2, 3]}
    assert requests == [
        {
            "path": "/base/api/v1/executions/X/nodes/Code/output",
            "query": {"executionIndex": "3"},
            "authorization": "Bearer first-token",  # the connection's, not a new one
            "x-extra": "yes",
        }
    ]
    # by url, by data, relative without a leading slash, absolute on the same server
    assert (await client.fetch_output("/api/v1/executions/X/nodes/A/output"))["node"] == "A"
    assert (await client.fetch_output({"url": "api/v1/executions/X/nodes/B/output"}))["node"] == "B"
    assert (await client.fetch_output(f"{base}/api/v1/executions/X/nodes/C/output"))["node"] == "C"
    assert [r["path"].rsplit("/", 2)[1] for r in requests] == ["Code", "A", "B", "C"]

    with pytest.raises(OutputFetchError) as caught:
        await client.fetch_output("/api/v1/executions/X/nodes/Gone/output")
    assert caught.value.status == 404 and caught.value.code == "output_not_found"
    with pytest.raises(OutputFetchError) as caught:
        await client.fetch_output("/api/v1/executions/X/nodes/Text/output")
    assert caught.value.status == 200 and caught.value.code == "invalid_json"
    with pytest.raises(OutputFetchError) as caught:
        await client.fetch_output("/nothing/here")
    assert caught.value.status == 404
    with pytest.raises(ValueError, match="not one of the client's servers"):
        await client.fetch_output("http://elsewhere.example/api/v1/x")
    with pytest.raises(ValueError, match="no output url"):
        await client.fetch_output({"data": {}})
    assert all(r["authorization"] == "Bearer first-token" for r in requests)
    await client.close()


async def test_fetch_output_uses_a_refreshed_token_and_fails_cleanly_offline() -> None:
    client, server = make_client(url="http://127.0.0.1:1")

    def refresh_reply(command: dict[str, Any]) -> dict[str, Any]:
        return reply(command, {"expiresAt": None})

    server.responders["refresh"] = refresh_reply
    await client.connect()
    await client.command("refresh", token="fresh")
    assert client._token == "fresh"
    with pytest.raises(OutputFetchError) as caught:
        await client.fetch_output("/api/v1/executions/X/nodes/A/output")
    assert caught.value.status is None and caught.value.code is None
    assert caught.value.url == "http://127.0.0.1:1/api/v1/executions/X/nodes/A/output"
    await client.close()
