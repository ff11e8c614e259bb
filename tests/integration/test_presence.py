"""Channel presence on one node: the `presence` command and `GET /api/v1/presence`."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import API_KEY, RunningServer
from tests.integration.helpers import command, receive_json


async def _connect(
    http: aiohttp.ClientSession, server: RunningServer, push_ref: str, user: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(server.push_url(push_ref, server.token(user), channels="workflow:1"))
    assert (await receive_json(ws))["type"] == "connected"
    return ws


async def _api(http: aiohttp.ClientSession, server: RunningServer, channel: str) -> dict[str, Any]:
    async with http.get(
        f"{server.url}/api/v1/presence",
        params={"channel": channel},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.status == 200
        return dict(await response.json())


async def test_presence_follows_subscriptions_and_connections(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await _connect(http, server, "tab-a", "alice")
    bob = await _connect(http, server, "tab-b", "bob")
    reply = await command(alice, {"type": "presence", "channel": "workflow:1", "id": 1})
    assert reply["data"] == {
        "channel": "workflow:1",
        "connections": [
            {"pushRef": "tab-a", "userId": "alice"},
            {"pushRef": "tab-b", "userId": "bob"},
        ],
        "users": ["alice", "bob"],
    }
    await command(bob, {"type": "unsubscribe", "channel": "workflow:1", "id": 2})
    assert (await _api(http, server, "workflow:1"))["users"] == ["alice"]
    await alice.close()
    # the session ends right after the close handshake
    async with asyncio.timeout(5):
        while (await _api(http, server, "workflow:1"))["connections"]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert (await _api(http, server, "workflow:1"))["users"] == []
    await bob.close()


async def test_presence_of_a_channel_one_is_not_in_is_refused(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    ws = await _connect(http, server, "tab-c", "carol")
    reply = await command(ws, {"type": "presence", "channel": "workflow:2", "id": 1})
    assert reply["type"] == "error" and reply["data"]["code"] == "not_subscribed"
    await ws.close()


async def test_presence_api_needs_the_key_and_a_valid_channel(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{server.url}/api/v1/presence?channel=workflow:1") as response:
        assert response.status == 401
    async with http.get(
        f"{server.url}/api/v1/presence?channel=nope",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_channel"
