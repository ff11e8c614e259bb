"""Subscriptions decided by the host application over HTTP (LIVEPUSH_AUTH_CALLBACK_URL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import API_KEY, ServerFactory
from tests.integration.helpers import command, receive_json


@pytest.fixture
async def host_app() -> AsyncIterator[tuple[str, list[dict]]]:
    """A stand-in for n8n's backend: alice may see workflow:77, nobody may see workflow:78,
    and asking about workflow:500 fails."""
    asked: list[dict] = []

    async def decide(request: web.Request) -> web.Response:
        body = await request.json()
        body["auth"] = request.headers.get("Authorization")
        asked.append(body)
        if body["channel"] == "workflow:500":
            return web.Response(status=500)
        allow = body["userId"] == "alice" and body["channel"] == "workflow:77"
        return web.json_response({"allow": allow})

    app = web.Application()
    app.router.add_post("/can-subscribe", decide)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/can-subscribe", asked
    await runner.cleanup()


async def test_callback_allows_refuses_caches_and_fails_closed(
    server_factory: ServerFactory, http: aiohttp.ClientSession, host_app
):
    url, asked = host_app
    server = await server_factory(auth_callback_url=url)
    ws = await http.ws_connect(server.push_url("tab1", server.token("alice", workflows=["1"])))
    await receive_json(ws)

    allowed = await command(ws, {"type": "subscribe", "id": 1, "channel": "workflow:77"})
    assert allowed["type"] == "reply"
    refused = await command(ws, {"type": "subscribe", "id": 2, "channel": "workflow:78"})
    assert refused["data"]["code"] == "forbidden"
    failed = await command(ws, {"type": "subscribe", "id": 3, "channel": "workflow:500"})
    assert failed["data"]["code"] == "authorization_unavailable"
    # Granted by the token itself: no question asked.
    assert (await command(ws, {"type": "subscribe", "id": 4, "channel": "workflow:1"}))[
        "type"
    ] == "reply"
    # Cached: asking again does not call the host application.
    await command(ws, {"type": "subscribe", "id": 5, "channel": "workflow:78"})
    assert [a["channel"] for a in asked] == ["workflow:77", "workflow:78", "workflow:500"]
    assert all(a["userId"] == "alice" for a in asked)
    assert asked[0]["auth"] == f"Bearer {API_KEY}"

    await server.publish(http, {"type": "workflowUpdated", "data": {}, "channel": "workflow:77"})
    assert (await receive_json(ws))["channel"] == "workflow:77"
    await ws.close()
