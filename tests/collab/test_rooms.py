"""Collaboration rooms against real servers on both engines (and two nodes sharing Redis):
who is editing (n8n's `collaboratorsChanged`, user > tabs > state), batching, cursors coalesced
per tick, node locks."""

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
async def pair(
    server_factory: ServerFactory, request: pytest.FixtureRequest
) -> tuple[RunningServer, RunningServer]:
    """Two servers editors connect to: one memory node twice, or two nodes on one Redis."""
    if request.param == "memory":
        server = await server_factory()
        return server, server
    prefix = f"lprooms-{uuid.uuid4().hex[:8]}"
    first = await server_factory(engine="redis", redis_url=redis_url(), redis_prefix=prefix)
    second = await server_factory(engine="redis", redis_url=redis_url(), redis_prefix=prefix)
    return first, second


def lists(watcher: Watcher) -> list[dict[str, Any]]:
    return [f["data"] for f in watcher.frames if f["type"] == "collaboratorsChanged"]


def users(data: dict[str, Any]) -> list[str]:
    return [c["user"]["id"] for c in data["collaborators"]]


def latest_users(watcher: Watcher) -> list[str] | None:
    found = lists(watcher)
    return users(found[-1]) if found else None


async def editor(
    http: aiohttp.ClientSession, server: RunningServer, ref: str, user: str, **claims: Any
) -> Watcher:
    tab = await Watcher.open(http, server, ref, server.token(user, **claims))
    await tab.ws.send_str(json.dumps({"type": "workflowOpened", "workflowId": "1"}))
    return tab


async def test_editors_see_each_other_with_profiles_tabs_and_state(
    pair: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    profile = {"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace"}
    ada = await editor(http, a, "ada-1", "ada", profile=profile)
    await ada.until(lambda: latest_users(ada) == ["ada"])
    bob = await editor(http, b, "bob-1", "bob")
    ada2 = await editor(http, b, "ada-2", "ada")
    for tab in (ada, bob, ada2):
        await tab.until(
            lambda tab=tab: (
                (data := lists(tab))
                and users(data[-1]) == ["ada", "bob"]
                and len(data[-1]["collaborators"][0]["tabs"]) == 2
            )
        )
    data = lists(bob)[-1]
    async with http.get(
        f"{b.url}/api/v1/workflows/1/collaborators",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.status == 200
        assert await response.json() == data  # the same list, from the API
    async with http.get(f"{b.url}/api/v1/workflows/1/collaborators") as response:
        assert response.status == 401
    assert data["workflowId"] == "1"
    first = data["collaborators"][0]
    assert first["user"] == {
        "id": "ada",
        "email": "ada@example.com",
        "firstName": "Ada",
        "lastName": "Lovelace",
    }
    assert data["collaborators"][1]["user"] == {
        "id": "bob",
        "email": "",
        "firstName": "",
        "lastName": "",
    }
    assert [t["clientId"] for t in first["tabs"]] == ["ada-1", "ada-2"]
    assert first["lastSeen"].endswith("Z") and first["lastSeen"] == max(
        t["lastSeen"] for t in first["tabs"]
    )
    # the tab's state (focus), shown to the others
    await bob.ws.send_str(
        json.dumps(
            {
                "type": "presenceUpdate",
                "workflowId": "1",
                "state": {"selectedNode": "n1", "status": "active"},
                "id": 5,
            }
        )
    )
    await ada.until(
        lambda: any(
            t["state"] == {"selectedNode": "n1", "status": "active"}
            for c in lists(ada)[-1]["collaborators"]
            for t in c["tabs"]
        )
    )
    assert bob.replies[5]["type"] == "reply"
    # a closed tab leaves at once; the user stays while another of its tabs is there
    await ada2.close()
    await bob.until(lambda: len(lists(bob)[-1]["collaborators"][0]["tabs"]) == 1)
    await bob.ws.send_str(json.dumps({"type": "workflowClosed", "workflowId": "1"}))
    await ada.until(lambda: latest_users(ada) == ["ada"])
    for tab in (ada, bob):
        await tab.close()


async def test_watching_the_workflow_does_not_make_a_collaborator(
    pair: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    dashboard = await Watcher.open(http, b, "dash", b.token("dash"), channels="workflow:1")
    ada = await editor(http, a, "ada-1", "ada")
    await ada.until(lambda: latest_users(ada) == ["ada"])
    await a.publish(http, {"channel": "workflow:1", "type": "workflowUpdated", "data": {}})
    await dashboard.until(lambda: dashboard.types("workflow:1") == ["workflowUpdated"])
    # nothing of the room reaches a subscriber of the workflow, and its stream is unchanged
    assert [f["type"] for f in dashboard.frames] == ["workflowUpdated"]
    await ada.close()
    await dashboard.close()


async def test_joins_are_batched(
    server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """30 people joining within a second: each editor gets a few lists, not one per join."""
    server = await server_factory(collab_flush_interval=1.0)
    first = await editor(http, server, "tab-0", "user-0")
    await first.until(lambda: latest_users(first) == ["user-0"])
    others = []
    for i in range(1, 30):  # one join every 20 ms or so
        others.append(await editor(http, server, f"tab-{i}", f"user-{i}"))
        await asyncio.sleep(0.02)
    everyone = sorted(f"user-{i}" for i in range(30))
    await first.until(lambda: latest_users(first) == everyone)
    # one list straight away, then at most one per flush interval while joins last
    assert len(lists(first)) <= 4, len(lists(first))
    for tab in (first, *others):
        await tab.close()


def batches(viewer: Watcher) -> list[dict[str, Any]]:
    return [f["data"] for f in viewer.frames if f["type"] == "collabEphemeral"]


def cursor(x: int, kind: str = "cursor") -> str:
    return json.dumps({"type": "ephemeral", "workflowId": "1", "kind": kind, "data": {"x": x}})


async def test_cursors_are_coalesced_per_tick(
    server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """1,000 cursor moves a second cost the others at most one update per tick, and the
    last position always arrives."""
    tick = 0.1
    server = await server_factory(collab_tick=tick)
    mover = await editor(http, server, "mover", "ada")
    viewer = await editor(http, server, "viewer", "bob")
    await mover.until(lambda: latest_users(mover) == ["ada", "bob"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    for x in range(1000):
        await mover.ws.send_str(cursor(x))
        if x % 10 == 9:
            await asyncio.sleep(0.01)
    elapsed = loop.time() - started

    def values() -> list[int]:
        return [
            u["data"]["x"] for b in batches(viewer) for u in b["updates"] if u["kind"] == "cursor"
        ]

    await viewer.until(lambda: values() and values()[-1] == 999)
    received = values()
    # one update per tick at most (the first can leave at once, and a tick can straddle)
    assert len(received) <= elapsed / tick + 3, (len(received), elapsed)
    assert received == sorted(received)
    for batch in batches(viewer):
        keys = [(u["clientId"], u["kind"]) for u in batch["updates"]]
        assert len(keys) == len(set(keys)), batch
        assert batch["workflowId"] == "1"
    update = batches(viewer)[-1]["updates"][-1]
    assert update["clientId"] == "mover" and update["userId"] == "ada"
    coalesced = server.services.collaboration.metrics.ephemeral.labels("coalesced")._value.get()
    assert coalesced >= 1000 - len(received)
    assert not [f for f in mover.frames if f["type"] == "error"]
    for tab in (mover, viewer):
        await tab.close()


async def test_ephemeral_flood_is_dropped_without_cutting_the_client(
    server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await server_factory(ephemeral_rate=50, ephemeral_burst=50)
    mover = await editor(http, server, "mover", "ada")
    viewer = await editor(http, server, "viewer", "bob")
    await mover.until(lambda: latest_users(mover) == ["ada", "bob"])
    for x in range(500):
        await mover.ws.send_str(cursor(x))
    metrics = server.services.collaboration.metrics.ephemeral
    await mover.until(lambda: metrics.labels("rate_limited")._value.get() >= 400)
    assert metrics.labels("received")._value.get() <= 100
    # no error and no disconnect; ordinary commands still work, and later updates get through
    assert (await mover.command({"type": "ping", "id": 1}))["type"] == "reply"
    await asyncio.sleep(0.2)
    await mover.ws.send_str(cursor(1, kind="viewport"))
    await viewer.until(
        lambda: any(u["kind"] == "viewport" for b in batches(viewer) for u in b["updates"])
    )
    assert not [f for f in mover.frames if f["type"] == "error"]
    for tab in (mover, viewer):
        await tab.close()


async def test_ephemeral_needs_the_room_and_bad_updates_get_codes(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tab = await Watcher.open(http, server, "t", server.token())
    refused = await tab.command(
        {"type": "ephemeral", "workflowId": "1", "kind": "cursor", "data": {}, "id": 1}
    )
    assert refused["type"] == "error" and refused["data"]["code"] == "not_subscribed"
    await tab.ws.send_str(json.dumps({"type": "workflowOpened", "workflowId": "1"}))
    await tab.until(lambda: lists(tab))
    bad_kind = await tab.command(
        {"type": "ephemeral", "workflowId": "1", "kind": "1 bad", "data": {}, "id": 2}
    )
    assert bad_kind["data"]["code"] == "invalid_message"
    too_big = await tab.command(
        {"type": "ephemeral", "workflowId": "1", "kind": "cursor", "data": "x" * 5000, "id": 3}
    )
    assert too_big["data"]["code"] == "payload_too_large"
    state = await tab.command(
        {"type": "presenceUpdate", "workflowId": "1", "state": {"x": "y" * 2000}, "id": 4}
    )
    assert state["data"]["code"] == "payload_too_large"
    assert not tab.ws.closed
    await tab.close()


async def test_node_locks(
    pair: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    ada = await editor(http, a, "ada-1", "ada")
    bob = await editor(http, b, "bob-1", "bob")
    await bob.until(lambda: latest_users(bob) == ["ada", "bob"])
    got = await ada.command(
        {"type": "nodeLockRequested", "workflowId": "1", "nodeId": "node-7", "id": 1}
    )
    assert got["type"] == "reply" and got["data"]["nodeId"] == "node-7"
    token = got["data"]["fencingToken"]

    def locked(tab: Watcher) -> list[dict[str, Any]]:
        return [f["data"] for f in tab.on("workflow:1") if f["type"] == "nodeLocked"]

    await bob.until(lambda: locked(bob))
    assert locked(bob)[0] == {
        "workflowId": "1",
        "nodeId": "node-7",
        "userId": "ada",
        "clientId": "ada-1",
        "fencingToken": token,
    }
    refused = await bob.command(
        {"type": "nodeLockRequested", "workflowId": "1", "nodeId": "node-7", "force": True, "id": 2}
    )
    assert refused["data"]["code"] == "lock_held"
    other = await bob.command(
        {"type": "nodeLockRequested", "workflowId": "1", "nodeId": "node-8", "id": 3}
    )
    assert other["type"] == "reply"
    # closing the tab lets go of its node locks; the next holder gets a higher token
    await ada.close()
    await bob.until(
        lambda: any(
            f["type"] == "nodeUnlocked" and f["data"]["nodeId"] == "node-7"
            for f in bob.on("workflow:1")
        )
    )
    again = await bob.command(
        {"type": "nodeLockRequested", "workflowId": "1", "nodeId": "node-7", "id": 4}
    )
    assert again["data"]["fencingToken"] > token
    released = await bob.command(
        {"type": "nodeLockReleased", "workflowId": "1", "nodeId": "node-8", "id": 5}
    )
    assert released["type"] == "reply"
    not_held = await bob.command(
        {"type": "nodeLockReleased", "workflowId": "1", "nodeId": "node-8", "id": 6}
    )
    assert not_held["data"]["code"] == "lock_not_held"
    # a read-only collaborator may not lock
    reader = await editor(http, a, "ray-1", "ray", read_only=["1"])
    refused = await reader.command(
        {"type": "nodeLockRequested", "workflowId": "1", "nodeId": "node-9", "id": 7}
    )
    assert refused["data"]["code"] == "forbidden"
    for tab in (bob, reader):
        await tab.close()


async def test_released_locks_are_announced_once(
    server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """The releasing node announces a release (write lock, node lock); the rooms' lock watch
    (polled every 0.1 s here) does not announce it again."""
    server = await server_factory(presence_ttl=1.2)
    ada = await editor(http, server, "ada-1", "ada")
    bob = await editor(http, server, "bob-1", "bob")
    await bob.until(lambda: latest_users(bob) == ["ada", "bob"])
    for request in (1, 3):
        granted = await ada.command(
            {"type": "writeAccessRequested", "workflowId": "1", "id": request}
        )
        assert granted["type"] == "reply"
        await asyncio.sleep(0.3)  # a few polls see the lock
        released = await ada.command(
            {"type": "writeAccessReleaseRequested", "workflowId": "1", "id": request + 1}
        )
        assert released["type"] == "reply"
    locked = await ada.command(
        {"type": "nodeLockRequested", "workflowId": "1", "nodeId": "n1", "id": 5}
    )
    assert locked["type"] == "reply"
    await asyncio.sleep(0.3)
    await ada.command({"type": "nodeLockReleased", "workflowId": "1", "nodeId": "n1", "id": 6})
    await asyncio.sleep(0.5)
    assert bob.types("workflow:1") == [
        "writeAccessAcquired",
        "writeAccessReleased",
        "writeAccessAcquired",
        "writeAccessReleased",
        "nodeLocked",
        "nodeUnlocked",
    ]
    for tab in (ada, bob):
        await tab.close()


async def test_a_reconnect_under_the_same_push_ref_stays_in_the_room(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    ada = await editor(http, server, "ada-1", "ada")
    bob = await editor(http, server, "bob-1", "bob")
    await bob.until(lambda: latest_users(bob) == ["ada", "bob"])
    # the same tab connects again before the server noticed the old connection died
    again = await Watcher.open(http, server, "ada-1", server.token("ada"), channels="workflow:1")
    await ada.until(lambda: ada.ws.closed)
    await asyncio.sleep(0.5)  # more than a flush interval: a departure would have been sent
    assert latest_users(bob) == ["ada", "bob"]
    # it is a member without opening the workflow again: its cursor reaches bob
    await again.ws.send_str(cursor(3))
    await bob.until(
        lambda: any(u["clientId"] == "ada-1" for b in batches(bob) for u in b["updates"])
    )
    await again.close()
    await bob.until(lambda: latest_users(bob) == ["bob"])
    await bob.close()


async def test_the_last_editor_leaving_and_a_new_one_arriving_at_once(
    pair: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession
) -> None:
    """A reload: the node's last editor of a room leaves and a new tab opens the room right
    away; the new tab still hears the other nodes' changes (the room's engine subscription
    was not ended under it)."""
    a, b = pair
    bob = await editor(http, b, "bob-1", "bob")
    for round_ in range(5):
        ada = await editor(http, a, f"ada-{round_}", "ada")
        await ada.until(lambda ada=ada: latest_users(ada) == ["ada", "bob"])
        fresh = await Watcher.open(http, a, f"ada-new-{round_}", a.token("ada"))
        opened = json.dumps({"type": "workflowOpened", "workflowId": "1"})
        await asyncio.gather(ada.close(), fresh.ws.send_str(opened))
        await bob.ws.send_str(
            json.dumps({"type": "presenceUpdate", "workflowId": "1", "state": {"round": round_}})
        )
        await fresh.until(
            lambda fresh=fresh, round_=round_: any(
                t["state"] == {"round": round_}
                for data in lists(fresh)[-1:]
                for c in data["collaborators"]
                for t in c["tabs"]
            )
        )
        await fresh.close()
    await bob.close()
