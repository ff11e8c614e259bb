"""The SSE transport, read as a raw `text/event-stream` (no SSE client library)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import RunningServer, ServerFactory
from tests.integration.helpers import SseReader

SSE = {"Accept": "text/event-stream"}


async def open_stream(
    http: aiohttp.ClientSession,
    server: RunningServer,
    push_ref: str,
    user: str = "alice",
    headers: dict[str, str] | None = None,
    **params: str,
) -> SseReader:
    response = await http.get(
        server.push_url(push_ref, server.token(user), **params), headers={**SSE, **(headers or {})}
    )
    assert response.status == 200, await response.text()
    return SseReader(response)


async def post_commands(
    http: aiohttp.ClientSession,
    server: RunningServer,
    push_ref: str,
    body: object,
    user: str = "alice",
) -> tuple[int, object]:
    async with http.post(
        server.push_url(push_ref),
        data=json.dumps(body),
        headers={"Authorization": f"Bearer {server.token(user)}"},
    ) as response:
        return response.status, await response.json()


async def test_stream_headers_and_greeting(server: RunningServer, http: aiohttp.ClientSession):
    reader = await open_stream(http, server, "tab1")
    headers = reader.response.headers
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["X-Accel-Buffering"] == "no"
    assert "no-cache" in headers["Cache-Control"]
    first = await reader.next_event()
    assert first["comments"] == ["ok"] and first["retry"] == "2000"
    greeting = await reader.next_message()
    assert greeting["type"] == "connected"
    assert greeting["data"]["pushRef"] == "tab1"
    reader.response.close()


async def test_published_message_is_one_event_with_resumable_id(
    server: RunningServer, http: aiohttp.ClientSession
):
    reader = await open_stream(http, server, "tab1", channels="workflow:1")
    await reader.message_of_type("connected")
    status, body = await server.publish(
        http, {"type": "workflowActivated", "data": {"workflowId": "1"}, "channel": "workflow:1"}
    )
    assert status == 200
    while True:
        event = await reader.next_event()
        if "data" in event:
            break
    message = json.loads(event["data"])
    assert message["type"] == "workflowActivated"
    assert message["data"] == {"workflowId": "1"}
    entries = dict(entry.split("|", 1) for entry in event["id"].split(","))
    placed = body["publications"][0]
    assert entries["workflow:1"] == f"{placed['epoch']}|{placed['offset']}"
    assert set(entries) == {"push:tab1", "user:alice", "system", "workflow:1"}
    reader.response.close()


async def test_last_event_id_resumes_every_channel_including_ones_subscribed_by_post(
    server: RunningServer, http: aiohttp.ClientSession
):
    reader = await open_stream(http, server, "tab1")
    await reader.message_of_type("connected")
    status, replies = await post_commands(
        http, server, "tab1", {"type": "subscribe", "id": 1, "channel": "workflow:2"}
    )
    assert status == 200
    assert replies[0]["type"] == "reply" and replies[0]["data"]["channel"] == "workflow:2"
    await server.publish(http, {"type": "one", "data": {}, "channel": "workflow:2"})
    assert (await reader.message_of_type("one"))["offset"] == 1
    last_id = reader.last_id
    assert last_id is not None and "workflow:2|" in last_id
    reader.response.close()

    for name in ("two", "three"):
        await server.publish(http, {"type": name, "data": {}, "channel": "workflow:2"})
    await server.publish(http, {"type": "mine", "data": {}, "pushRef": "tab1"})

    # What a browser's EventSource does by itself: same URL, plus Last-Event-ID.
    reader = await open_stream(http, server, "tab1", headers={"Last-Event-ID": last_id})
    greeting = await reader.message_of_type("connected")
    recovered = {c["channel"]: c.get("recovered") for c in greeting["data"]["channels"]}
    assert recovered["workflow:2"] is True and recovered["push:tab1"] is True
    got = [(await reader.next_message())["type"] for _ in range(3)]
    assert sorted(got) == ["mine", "three", "two"]
    assert got.index("two") < got.index("three")
    reader.response.close()


async def test_commands_by_post_have_websocket_semantics(
    server: RunningServer, http: aiohttp.ClientSession
):
    reader = await open_stream(http, server, "tab1")
    await reader.message_of_type("connected")
    status, replies = await post_commands(
        http,
        server,
        "tab1",
        [
            {"type": "ping", "id": 1},
            {"type": "subscribe", "id": 2, "channel": "workflow:99"},
            {"type": "nope", "id": 3},
            {"type": "heartbeat"},
            {"type": "workflowOpened", "workflowId": "1"},
        ],
    )
    assert status == 200
    assert [(r["type"], r.get("id")) for r in replies] == [
        ("reply", 1),
        ("error", 2),
        ("error", 3),
    ]
    assert replies[1]["data"]["code"] == "forbidden"
    assert replies[2]["data"]["code"] == "unknown_command"
    await server.publish(http, {"type": "workflowUpdated", "data": {}, "channel": "workflow:1"})
    assert (await reader.message_of_type("workflowUpdated"))["channel"] == "workflow:1"
    reader.response.close()


async def test_post_commands_refuse_other_users_and_unknown_sessions(
    server: RunningServer, http: aiohttp.ClientSession
):
    reader = await open_stream(http, server, "tab1")
    await reader.message_of_type("connected")
    status, body = await post_commands(http, server, "tab1", {"type": "ping", "id": 1}, "bob")
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await post_commands(http, server, "ghost", {"type": "ping", "id": 1})
    assert status == 404 and body["error"]["code"] == "session_not_found"
    async with http.post(
        server.push_url("tab1"),
        data=b"{oops",
        headers={"Authorization": f"Bearer {server.token()}"},
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_json"
    async with http.post(server.push_url("tab1"), data=b"{}") as response:
        assert response.status == 401
    reader.response.close()


async def test_sse_comment_pings_keep_the_stream_alive(
    server_factory: ServerFactory, http: aiohttp.ClientSession
):
    server = await server_factory(ping_interval=0.2)
    reader = await open_stream(http, server, "tab1")
    await reader.message_of_type("connected")
    while True:
        event = await reader.next_event(timeout=2)
        if "ping" in event["comments"]:
            break
    reader.response.close()


async def test_sse_client_disconnect_is_noticed(server: RunningServer, http):
    reader = await open_stream(http, server, "tab1")
    await reader.message_of_type("connected")
    assert server.node.session("tab1") is not None
    reader.response.close()
    for _ in range(100):
        if server.node.session("tab1") is None:
            break
        await asyncio.sleep(0.02)
    assert server.node.session("tab1") is None


async def test_connect_writes_one_id_event_with_every_channel_position(
    server: RunningServer, http: aiohttp.ClientSession
):
    reader = await open_stream(http, server, "tab1", channels="workflow:1")
    await reader.message_of_type("connected")
    event = await reader.next_event()
    assert "data" not in event
    assert [entry.split("|")[0] for entry in event["id"].split(",")] == [
        "push:tab1",
        "user:alice",
        "system",
        "workflow:1",
    ]
    reader.response.close()
