"""n8n's workflow write lock through livepush, against a real server on both engines: one
writer per workflow, force takeover only from the same user's other tab, fencing tokens a
save handler can check, and the lock gone with its holder (tab closed, workflow closed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest

from tests.conftest import API_KEY, RunningServer, ServerFactory, redis_url
from tests.execution.test_executions import Watcher


@pytest.fixture(params=["memory", "redis"])
async def server(server_factory: ServerFactory, request: pytest.FixtureRequest) -> RunningServer:
    if request.param == "memory":
        return await server_factory()
    return await server_factory(
        engine="redis", redis_url=redis_url(), redis_prefix=f"lpwl-{uuid.uuid4().hex[:8]}"
    )


async def check(http: aiohttp.ClientSession, server: RunningServer, token: int) -> Any:
    async with http.post(
        f"{server.url}/api/v1/locks/check",
        json={"lock": "workflow:1", "token": token},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        return (await response.json())["valid"]


def acquired(watcher: Watcher) -> list[dict[str, Any]]:
    return [f["data"] for f in watcher.on("workflow:1") if f["type"] == "writeAccessAcquired"]


async def test_one_writer_takeover_by_the_same_user_and_fencing(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice1 = await Watcher.open(http, server, "alice-1", server.token(), channels="workflow:1")
    alice2 = await Watcher.open(http, server, "alice-2", server.token(), channels="workflow:1")
    bob = await Watcher.open(http, server, "bob-1", server.token("bob"), channels="workflow:1")

    first = await alice1.command({"type": "writeAccessRequested", "workflowId": "1", "id": 1})
    assert first["type"] == "reply", first
    token1 = first["data"]["fencingToken"]
    await bob.until(lambda: acquired(bob))
    assert acquired(bob)[0] == {
        "workflowId": "1",
        "userId": "alice",
        "clientId": "alice-1",
        "fencingToken": token1,
    }
    # another user cannot take it, not even with force
    refused = await bob.command(
        {"type": "writeAccessRequested", "workflowId": "1", "force": True, "id": 2}
    )
    assert refused["type"] == "error" and refused["data"]["code"] == "lock_held"
    # the same user's other tab can, with force; the first tab's token is then stale
    taken = await alice2.command(
        {"type": "writeAccessRequested", "workflowId": "1", "force": True, "id": 3}
    )
    token2 = taken["data"]["fencingToken"]
    assert token2 > token1
    assert await check(http, server, token2) is True
    assert await check(http, server, token1) is False
    await bob.until(lambda: len(acquired(bob)) == 2)
    assert acquired(bob)[1]["clientId"] == "alice-2"
    # a heartbeat renews without a new announcement; the old holder's heartbeat fails
    beat = await alice2.command({"type": "writeAccessHeartbeat", "workflowId": "1", "id": 4})
    assert beat["data"]["fencingToken"] == token2
    lost = await alice1.command({"type": "writeAccessHeartbeat", "workflowId": "1", "id": 5})
    assert lost["type"] == "error" and lost["data"]["code"] in ("lock_held", "lock_not_held")
    # closing the tab releases it
    await alice2.close()
    await bob.until(lambda: any(f["type"] == "writeAccessReleased" for f in bob.on("workflow:1")))
    assert await check(http, server, token2) is False
    mine = await bob.command({"type": "writeAccessRequested", "workflowId": "1", "id": 6})
    assert mine["type"] == "reply" and mine["data"]["fencingToken"] > token2
    await bob.until(lambda: len(acquired(bob)) == 3)  # its own announcement comes too
    assert acquired(bob)[2]["clientId"] == "bob-1"
    for who in (alice1, bob):
        await who.close()


async def test_n8n_messages_without_ids_and_closing_the_workflow(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tab = await Watcher.open(http, server, "tab", server.token(), channels="workflow:1")
    other = await Watcher.open(http, server, "other", server.token("bob"), channels="workflow:1")
    # n8n sends flat messages and expects no reply
    await tab.ws.send_str(json.dumps({"type": "writeAccessRequested", "workflowId": "1"}))
    await other.until(lambda: acquired(other))
    await tab.ws.send_str(json.dumps({"type": "workflowClosed", "workflowId": "1"}))
    await other.until(
        lambda: any(f["type"] == "writeAccessReleased" for f in other.on("workflow:1"))
    )
    assert await server.node.engine.locks.holder("workflow:1") is None
    assert not tab.replies
    # and nobody without access to the workflow may ask
    stranger = await Watcher.open(http, server, "x", server.token("eve", workflows=[]))
    refused = await stranger.command({"type": "writeAccessRequested", "workflowId": "1", "id": 1})
    assert refused["type"] == "error" and refused["data"]["code"] == "forbidden"
    # nor a reader whose token marks the workflow read-only
    reader = await Watcher.open(
        http, server, "r", server.token("ray", read_only=["1"]), channels="workflow:1"
    )
    refused = await reader.command({"type": "writeAccessRequested", "workflowId": "1", "id": 1})
    assert refused["type"] == "error" and refused["data"]["code"] == "forbidden"
    assert "read-only" in refused["data"]["message"]
    for who in (tab, other, stranger, reader):
        await who.close()


async def test_a_lock_its_tab_stops_confirming_is_released(
    server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """A tab that stays connected but stops heartbeating (frozen, forgotten) loses the write
    lock after lock_idle_ttl; one that heartbeats keeps it, under the same token."""
    server = await server_factory(lock_idle_ttl=1.0, presence_ttl=1.5)  # renewal every 0.5 s
    busy = await Watcher.open(http, server, "busy", server.token(), channels="workflow:1")
    idle = await Watcher.open(http, server, "idle", server.token(), channels="workflow:2")
    token = (await busy.command({"type": "writeAccessRequested", "workflowId": "1", "id": 1}))[
        "data"
    ]["fencingToken"]
    await idle.command({"type": "writeAccessRequested", "workflowId": "2", "id": 1})
    loop = asyncio.get_running_loop()
    until = loop.time() + 3.0
    beat = 2
    while loop.time() < until:
        await asyncio.sleep(0.3)
        kept = await busy.command({"type": "writeAccessHeartbeat", "workflowId": "1", "id": beat})
        assert kept["type"] == "reply" and kept["data"]["fencingToken"] == token
        beat += 1
    assert "writeAccessReleased" in idle.types("workflow:2")
    assert "writeAccessReleased" not in busy.types("workflow:1")
    assert await server.node.engine.locks.holder("workflow:2") is None
    lost = await idle.command({"type": "writeAccessHeartbeat", "workflowId": "2", "id": 9})
    assert lost["type"] == "error" and lost["data"]["code"] == "lock_not_held"
    for tab in (busy, idle):
        await tab.close()
