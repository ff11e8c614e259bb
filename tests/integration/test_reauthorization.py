"""A connection's channels are authorized again when its identity changes: a refreshed token
that grants less ends the subscriptions it no longer grants, each told `unsubscribed`."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import RunningServer
from tests.integration.helpers import command, receive_json, receive_until


async def test_refresh_with_fewer_grants_ends_what_it_no_longer_grants(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    ws = await http.ws_connect(server.push_url("tab1", server.token(workflows=["1", "2"])))
    assert (await receive_json(ws))["type"] == "connected"
    for i, channel in enumerate(("workflow:1", "workflow:2")):
        reply = await command(ws, {"type": "subscribe", "id": i, "channel": channel})
        assert reply["type"] == "reply"

    reply = await command(ws, {"type": "refresh", "id": 9, "token": server.token(workflows=["1"])})
    assert reply["type"] == "reply"
    ended = await receive_until(ws, "unsubscribed")
    assert ended["data"]["channel"] == "workflow:2"
    assert ended["data"]["code"] == "forbidden"
    assert server.node.session("tab1") is not None
    assert server.node.session("tab1").channels == ["workflow:1"]  # type: ignore[union-attr]

    await server.publish(http, {"type": "secret", "data": {}, "channel": "workflow:2"})
    await server.publish(http, {"type": "visible", "data": {}, "channel": "workflow:1"})
    message = await receive_json(ws)
    assert message["type"] == "visible"
    # and the channel cannot be joined again with this token
    again = await command(ws, {"type": "subscribe", "id": 10, "channel": "workflow:2"})
    assert again["type"] == "error" and again["data"]["code"] == "forbidden"
    await ws.close()


async def test_refresh_with_the_same_grants_keeps_every_subscription(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    ws = await http.ws_connect(server.push_url("tab1", server.token()))
    assert (await receive_json(ws))["type"] == "connected"
    await command(ws, {"type": "subscribe", "id": 1, "channel": "workflow:1"})
    reply = await command(ws, {"type": "refresh", "id": 2, "token": server.token()})
    assert reply["type"] == "reply"
    await server.publish(http, {"type": "still", "data": {}, "channel": "workflow:1"})
    assert (await receive_json(ws))["type"] == "still"
    with_nothing_else = asyncio.wait_for(ws.receive(), 0.2)
    try:
        extra = await with_nothing_else
    except TimeoutError:
        extra = None
    assert extra is None, extra
    await ws.close()
