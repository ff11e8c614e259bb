"""The WebSocket transport against a real server, driven by aiohttp's WebSocket client."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import RunningServer, ServerFactory
from tests.integration.helpers import command, expect_close, receive_json, receive_until


async def connect(
    http: aiohttp.ClientSession,
    server: RunningServer,
    push_ref: str,
    user: str = "alice",
    **params: str,
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(server.push_url(push_ref, server.token(user), **params))
    greeting = await receive_json(ws)
    assert greeting["type"] == "connected"
    return ws


async def test_connect_greets_with_own_channels(server: RunningServer, http: aiohttp.ClientSession):
    ws = await http.ws_connect(server.push_url("tab1", server.token("alice")))
    greeting = await receive_json(ws)
    assert greeting["type"] == "connected"
    data = greeting["data"]
    assert data["protocol"] == 1
    assert data["pushRef"] == "tab1"
    assert data["userId"] == "alice"
    assert [c["channel"] for c in data["channels"]] == ["push:tab1", "user:alice", "system"]
    assert all(c["offset"] == 0 and c["epoch"] for c in data["channels"])
    await ws.close()


async def test_published_message_has_n8n_envelope_plus_stream_metadata(
    server: RunningServer, http: aiohttp.ClientSession
):
    ws = await connect(http, server, "tab1")
    reply = await command(ws, {"type": "subscribe", "id": 1, "channel": "workflow:1"})
    assert reply["type"] == "reply" and reply["data"]["channel"] == "workflow:1"
    data = {"workflowId": "1", "userId": "bob", "nested": {"list": [1, 2, 3], "text": "é\n"}}
    status, body = await server.publish(
        http, {"type": "workflowUpdated", "data": data, "channel": "workflow:1"}
    )
    assert status == 200
    [placed] = body["publications"]
    frame = await receive_json(ws)
    assert frame == {
        "type": "workflowUpdated",
        "data": data,
        "channel": "workflow:1",
        "offset": placed["offset"],
        "epoch": placed["epoch"],
    }
    await ws.close()


async def test_routing_to_push_ref_users_and_broadcast(
    server: RunningServer, http: aiohttp.ClientSession
):
    alice_tab1 = await connect(http, server, "a1", "alice")
    alice_tab2 = await connect(http, server, "a2", "alice")
    bob = await connect(http, server, "b1", "bob")

    await server.publish(http, {"type": "toOne", "data": {}, "pushRef": "a2"})
    await server.publish(http, {"type": "toAlice", "data": {}, "userIds": ["alice"]})
    await server.publish(http, {"type": "toAll", "data": {}, "broadcast": True})

    assert [(await receive_json(alice_tab1))["type"] for _ in range(2)] == ["toAlice", "toAll"]
    assert [(await receive_json(alice_tab2))["type"] for _ in range(3)] == [
        "toOne",
        "toAlice",
        "toAll",
    ]
    assert (await receive_json(bob))["type"] == "toAll"
    # Nothing else is pending for bob: the next frame is the reply to a ping.
    assert (await command(bob, {"type": "ping", "id": "p"}))["type"] == "reply"
    for ws in (alice_tab1, alice_tab2, bob):
        await ws.close()


async def test_messages_arrive_in_publish_order_with_consecutive_offsets(
    server: RunningServer, http: aiohttp.ClientSession
):
    ws = await connect(http, server, "tab1", channels="workflow:1")
    messages = [{"type": "step", "data": {"i": i}, "channel": "workflow:1"} for i in range(500)]
    for start in range(0, 500, 100):
        status, _ = await server.publish(http, {"messages": messages[start : start + 100]})
        assert status == 200
    frames = [await receive_json(ws) for _ in range(500)]
    assert [f["data"]["i"] for f in frames] == list(range(500))
    assert [f["offset"] for f in frames] == list(range(1, 501))
    await ws.close()


async def test_resubscribe_since_recovers_exactly_what_was_missed(
    server: RunningServer, http: aiohttp.ClientSession
):
    ws = await connect(http, server, "tab1", channels="workflow:1")
    for i in range(3):
        await server.publish(http, {"type": "step", "data": {"i": i}, "channel": "workflow:1"})
    seen = [await receive_json(ws) for _ in range(3)]
    last = seen[-1]
    await ws.close()

    for i in range(3, 8):
        await server.publish(http, {"type": "step", "data": {"i": i}, "channel": "workflow:1"})

    ws = await connect(http, server, "tab1")
    reply = await command(
        ws,
        {
            "type": "subscribe",
            "id": 7,
            "channel": "workflow:1",
            "since": {"epoch": last["epoch"], "offset": last["offset"]},
        },
    )
    assert reply["data"]["recovered"] is True
    assert reply["data"]["missed"] == 5
    missed = [await receive_json(ws) for _ in range(5)]
    assert [m["data"]["i"] for m in missed] == [3, 4, 5, 6, 7]
    await server.publish(http, {"type": "step", "data": {"i": 8}, "channel": "workflow:1"})
    assert (await receive_json(ws))["data"]["i"] == 8
    await ws.close()


async def test_connect_with_last_event_id_recovers_every_listed_channel(
    server: RunningServer, http: aiohttp.ClientSession
):
    ws = await connect(http, server, "tab1", channels="workflow:1")
    await server.publish(http, {"type": "a", "data": {}, "channel": "workflow:1"})
    await server.publish(http, {"type": "b", "data": {}, "pushRef": "tab1"})
    first, second = await receive_json(ws), await receive_json(ws)
    await ws.close()
    await server.publish(http, {"type": "c", "data": {}, "channel": "workflow:1"})
    await server.publish(http, {"type": "d", "data": {}, "pushRef": "tab1"})

    positions = ",".join(f"{f['channel']}|{f['epoch']}|{f['offset']}" for f in (first, second))
    ws = await http.ws_connect(server.push_url("tab1", server.token(), lastEventId=positions))
    greeting = await receive_json(ws)
    recovered = {c["channel"]: c.get("recovered") for c in greeting["data"]["channels"]}
    assert recovered["workflow:1"] is True and recovered["push:tab1"] is True
    got = sorted([(await receive_json(ws))["type"] for _ in range(2)])
    assert got == ["c", "d"]
    await ws.close()


async def test_recovery_beyond_history_says_not_recovered(
    server_factory: ServerFactory, http: aiohttp.ClientSession
):
    server = await server_factory(history_size=3)
    ws = await connect(http, server, "tab1", channels="workflow:1")
    await server.publish(http, {"type": "a", "data": {}, "channel": "workflow:1"})
    first = await receive_json(ws)
    await ws.close()
    for _ in range(5):
        await server.publish(http, {"type": "b", "data": {}, "channel": "workflow:1"})
    ws = await connect(http, server, "tab1")
    since = {"epoch": first["epoch"], "offset": first["offset"]}
    reply = await command(
        ws, {"type": "subscribe", "id": 1, "channel": "workflow:1", "since": since}
    )
    assert reply["data"]["recovered"] is False
    assert reply["data"]["offset"] == 6
    # Only new messages follow; nothing of the lost range is replayed.
    await server.publish(http, {"type": "fresh", "data": {}, "channel": "workflow:1"})
    assert (await receive_json(ws))["type"] == "fresh"

    wrong_epoch = {"epoch": "000000000000", "offset": 1}
    reply = await command(
        ws, {"type": "subscribe", "id": 2, "channel": "workflow:2", "since": wrong_epoch}
    )
    assert reply["data"]["recovered"] is False
    await ws.close()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"id": 3}', "invalid_message"),
        ('{"type": "teleport", "id": 4}', "unknown_command"),
        ('{"type": "subscribe", "id": 5}', "invalid_message"),
        ('{"type": "subscribe", "id": 6, "channel": "nope:1"}', "invalid_channel"),
        ('{"type": "subscribe", "id": 7, "channel": "workflow:a b"}', "invalid_channel"),
        ('{"type": "subscribe", "id": 8, "channel": "workflow:99"}', "forbidden"),
        ('{"type": "subscribe", "id": 9, "channel": "user:bob"}', "forbidden"),
        ('{"type": "subscribe", "id": 10, "channel": "push:other"}', "forbidden"),
        ('{"type": "unsubscribe", "id": 11, "channel": "workflow:2"}', "not_subscribed"),
        (
            '{"type": "subscribe", "id": 12, "channel": "workflow:1", "since": {"offset": -1}}',
            "invalid_message",
        ),
    ],
)
async def test_bad_input_gets_stable_error_code_and_connection_stays_open(
    server: RunningServer, http: aiohttp.ClientSession, payload: str, code: str
):
    ws = await connect(http, server, "tab1")
    bystander = await connect(http, server, "tab2", "bob")
    await ws.send_str(payload)
    error = await receive_until(ws, "error")
    assert error["data"]["code"] == code
    assert error["data"]["message"]
    request_id = json.loads(payload).get("id") if payload.startswith("{") else None
    if request_id is not None:
        assert error["id"] == request_id
    assert (await command(ws, {"type": "ping", "id": "after"}))["type"] == "reply"
    assert (await command(bystander, {"type": "ping", "id": "b"}))["type"] == "reply"
    await ws.close()
    await bystander.close()


async def test_binary_frame_is_refused_with_error(server: RunningServer, http):
    ws = await connect(http, server, "tab1")
    await ws.send_bytes(b"\x00\x01")
    error = await receive_until(ws, "error")
    assert error["data"]["code"] == "binary_not_supported"
    assert (await command(ws, {"type": "ping", "id": 1}))["type"] == "reply"
    await ws.close()


async def test_oversized_frame_closes_only_that_connection_with_1009(
    server_factory: ServerFactory, http: aiohttp.ClientSession
):
    server = await server_factory(max_message_bytes=1024)
    ws = await connect(http, server, "tab1")
    other = await connect(http, server, "tab2")
    await ws.send_str(json.dumps({"type": "ping", "id": "x" * 2000}))
    assert await expect_close(ws) == 1009
    assert (await command(other, {"type": "ping", "id": 1}))["type"] == "reply"
    await other.close()


async def test_rate_limit_errors_then_disconnects_abusive_client(
    server_factory: ServerFactory, http: aiohttp.ClientSession
):
    server = await server_factory(rate_limit=5, rate_burst=5)
    ws = await connect(http, server, "tab1")
    other = await connect(http, server, "tab2")
    for i in range(8):
        await ws.send_str(json.dumps({"type": "ping", "id": i}))
    frames = [await receive_json(ws) for _ in range(8)]
    assert [f["type"] for f in frames[:5]] == ["reply"] * 5
    assert all(f["type"] == "error" and f["data"]["code"] == "rate_limited" for f in frames[5:])
    # each refused command is answered with its own id
    assert [f.get("id") for f in frames[5:]] == [5, 6, 7]
    for i in range(20):
        await ws.send_str(json.dumps({"type": "ping", "id": 100 + i}))
    assert await expect_close(ws) == 4029
    assert (await command(other, {"type": "ping", "id": 1}))["type"] == "reply"
    await other.close()


async def test_n8n_flat_messages_heartbeat_and_workflow_opened(
    server: RunningServer, http: aiohttp.ClientSession
):
    ws = await connect(http, server, "tab1")
    await ws.send_str('{"type":"heartbeat"}')
    await ws.send_str('{"type":"workflowOpened","workflowId":"1"}')
    # the tab is a collaborator now (n8n's list, in the room's channel)
    joined = await receive_until(ws, "collaboratorsChanged")
    assert joined["channel"] == "collab:1"
    assert [c["user"]["id"] for c in joined["data"]["collaborators"]] == ["alice"]
    # Heartbeats get no reply; the ping's reply is the next frame.
    assert (await command(ws, {"type": "ping", "id": 1}))["type"] == "reply"
    await server.publish(http, {"type": "workflowUpdated", "data": {}, "channel": "workflow:1"})
    assert (await receive_json(ws))["type"] == "workflowUpdated"
    # opening it again with an id is answered (already subscribed)
    again = await command(ws, {"type": "workflowOpened", "workflowId": "1", "id": "again"})
    assert again["type"] == "reply" and again["data"]["alreadySubscribed"] is True
    await ws.send_str('{"type":"workflowClosed","workflowId":"1"}')
    assert (await command(ws, {"type": "ping", "id": 2}))["type"] == "reply"
    await server.publish(http, {"type": "workflowUpdated", "data": {}, "channel": "workflow:1"})
    await server.publish(http, {"type": "marker", "data": {}, "pushRef": "tab1"})
    assert (await receive_json(ws))["type"] == "marker"
    await ws.close()


async def test_same_push_ref_replaces_previous_connection(
    server: RunningServer, http: aiohttp.ClientSession
):
    old = await connect(http, server, "tab1")
    new = await connect(http, server, "tab1")
    assert await expect_close(old) == 4009
    await server.publish(http, {"type": "hello", "data": {}, "pushRef": "tab1"})
    assert (await receive_json(new))["type"] == "hello"
    await new.close()


async def test_push_ref_of_another_user_is_refused(server: RunningServer, http):
    ws = await connect(http, server, "tab1", "alice")
    sse = {"Accept": "text/event-stream"}
    async with http.get(server.push_url("tab1", server.token("mallory")), headers=sse) as response:
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "push_ref_in_use"
    await ws.close()
    # Still reserved for alice after she leaves, so mallory cannot read the tab's history.
    await asyncio.sleep(0.05)
    async with http.get(server.push_url("tab1", server.token("mallory")), headers=sse) as response:
        assert response.status == 409


async def test_connections_per_user_are_limited(server_factory: ServerFactory, http):
    server = await server_factory(max_connections_per_user=2)
    first = await connect(http, server, "t1")
    second = await connect(http, server, "t2")
    sse = {"Accept": "text/event-stream"}
    async with http.get(server.push_url("t3", server.token()), headers=sse) as response:
        assert response.status == 429
        assert (await response.json())["error"]["code"] == "too_many_connections"
    await first.close()
    await second.close()


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda s: None, "unauthorized"),
        (lambda s: "not-a-jwt", "token_invalid"),
        (lambda s: s.token("alice", ttl=-60), "token_expired"),
        (lambda s: s.token("alice")[:-4] + "AAAA", "token_invalid"),
    ],
)
async def test_failed_handshake_gets_401_with_json_error(
    server: RunningServer, http: aiohttp.ClientSession, make_token, code: str
):
    token = make_token(server)
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await http.ws_connect(server.push_url("tab1", token))
    assert raised.value.status == 401
    async with http.get(
        server.push_url("tab1", token),
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    ) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == code


async def test_token_from_bearer_header_and_from_n8n_cookie(server: RunningServer, http):
    token = server.token("alice")
    ws = await http.ws_connect(server.push_url("h1"), headers={"Authorization": f"Bearer {token}"})
    assert (await receive_json(ws))["data"]["userId"] == "alice"
    await ws.close()
    ws = await http.ws_connect(server.push_url("c1"), headers={"Cookie": f"n8n-auth={token}"})
    assert (await receive_json(ws))["data"]["userId"] == "alice"
    await ws.close()


async def test_missing_push_ref_is_400(server: RunningServer, http):
    url = f"{server.url}/rest/push?token={server.token()}"
    async with http.get(url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "push_ref_required"


async def test_foreign_origin_is_refused_with_a_message_naming_what_was_seen(
    server_factory: ServerFactory, http
):
    server = await server_factory()
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await http.ws_connect(
            server.push_url("tab1", server.token()), origin="https://evil.example"
        )
    assert raised.value.status == 403
    async with http.get(
        server.push_url("tab1", server.token()),
        headers={"Origin": "https://evil.example", "Accept": "text/event-stream"},
    ) as response:
        body = await response.json()
    message = body["error"]["message"]
    assert body["error"]["code"] == "origin_not_allowed"
    assert "https://evil.example" in message and "127.0.0.1" in message
    assert "LIVEPUSH_ALLOWED_ORIGINS" in message

    allowed = await server_factory(allowed_origins="https://editor.example")
    ws = await http.ws_connect(
        allowed.push_url("tab1", allowed.token()), origin="https://editor.example"
    )
    assert (await receive_json(ws))["type"] == "connected"
    await ws.close()
    host = server.url.removeprefix("http://")
    ws = await http.ws_connect(server.push_url("tab2", server.token()), origin=f"http://{host}")
    assert (await receive_json(ws))["type"] == "connected"
    await ws.close()


async def test_expired_token_closes_connection_with_4001(server_factory: ServerFactory, http):
    server = await server_factory(jwt_leeway=0, token_expiry_warning=0.5)
    ws = await http.ws_connect(server.push_url("tab1", server.token(ttl=2)))
    await receive_json(ws)
    warning = await receive_until(ws, "tokenExpiring", timeout=3)
    assert warning["data"]["expiresAt"] > 0
    error = await receive_until(ws, "error", timeout=3)
    assert error["data"]["code"] == "token_expired"
    assert await expect_close(ws) == 4001


async def test_refreshed_token_keeps_connection_open(server_factory: ServerFactory, http):
    server = await server_factory(jwt_leeway=0, token_expiry_warning=0.3)
    ws = await http.ws_connect(server.push_url("tab1", server.token(ttl=2)))
    await receive_json(ws)
    await receive_until(ws, "tokenExpiring", timeout=3)
    reply = await command(ws, {"type": "refresh", "id": 1, "token": server.token(ttl=60)})
    assert reply["type"] == "reply" and reply["data"]["expiresAt"] > 0
    await asyncio.sleep(1.2)
    assert (await command(ws, {"type": "ping", "id": 2}))["type"] == "reply"
    mismatch = await command(ws, {"type": "refresh", "id": 3, "token": server.token("bob")})
    assert mismatch["data"]["code"] == "token_user_mismatch"
    await ws.close()


async def test_server_pings_and_drops_a_peer_that_never_answers(
    server_factory: ServerFactory, http
):
    server = await server_factory(ping_interval=0.3)
    ws = await http.ws_connect(server.push_url("tab1", server.token()), autoping=False)
    await receive_json(ws)
    ping = await asyncio.wait_for(ws.receive(), 2)
    assert ping.type is aiohttp.WSMsgType.PING
    await expect_close(ws, timeout=3)
    assert ws.closed


async def test_a_client_that_answers_pings_stays_connected(server_factory: ServerFactory, http):
    server = await server_factory(ping_interval=0.1)
    ws = await http.ws_connect(server.push_url("tab1", server.token()))
    await receive_json(ws)
    # aiohttp's client answers pings from inside receive(), so keep a reader running, as any
    # real client does.
    frames: list[str] = []

    async def read() -> None:
        async for message in ws:
            frames.append(message.data)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.6)
    await ws.send_str(json.dumps({"type": "ping", "id": 1}))
    await asyncio.sleep(0.1)
    assert not ws.closed
    assert json.loads(frames[-1]) == {"type": "reply", "id": 1, "data": {}}
    await ws.close()
    await reader


async def test_metrics_count_connections_messages_and_errors(server: RunningServer, http):
    ws = await connect(http, server, "tab1", channels="workflow:1")
    await server.publish(http, {"type": "workflowUpdated", "data": {}, "channel": "workflow:1"})
    await receive_json(ws)
    await ws.send_str("garbage")
    await receive_until(ws, "error")
    async with http.get(f"{server.url}/metrics") as response:
        text = await response.text()
    assert 'livepush_connections{transport="websocket"} 1.0' in text
    assert 'livepush_messages_out_total{type="workflowUpdated"} 1.0' in text
    assert 'livepush_bytes_out_total{type="workflowUpdated"}' in text
    assert 'livepush_messages_in_total{type="invalid"} 1.0' in text
    assert 'livepush_bytes_in_total{type="invalid"} 7.0' in text
    assert 'livepush_errors_total{code="invalid_json"} 1.0' in text
    assert "livepush_publish_to_write_seconds_bucket" in text
    await ws.close()
