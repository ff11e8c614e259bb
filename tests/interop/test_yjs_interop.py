"""Interop with stock npm `yjs` + `y-websocket` clients in Node processes (BroadcastChannel
off, so everything goes through the server), next to the Python client: convergence through
one node and through two, read-only refusal, and no acknowledged edit lost when a server is
killed (SIGKILL) and restarted, or when one of two nodes dies."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from livepush.auth.tokens import mint_token
from livepush.client.crdt import CrdtClient, crdt_url
from tests.conftest import SECRET, RunningServer, ServerFactory, redis_url, require_npm
from tests.crdt.crdt_support import YjsNodeClient, canvas_of, eventually
from tests.integration.process import serve_process


@pytest.fixture
def yjs_script() -> Path:
    return require_npm("yjs", "y-websocket", "ws") / "yjs-client.mjs"


class Party:
    """The clients of one test (Node and Python), all closed at its end."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.node_clients: list[YjsNodeClient] = []
        self.python_clients: list[CrdtClient] = []

    async def yjs(self, base_url: str, room: str, token: str) -> YjsNodeClient:
        server_url = base_url.replace("http://", "ws://") + "/rest/crdt"
        client = await YjsNodeClient.start(self.script, server_url, room, token)
        self.node_clients.append(client)
        await client.synced()
        return client

    async def python(
        self, base_url: str, room: str, token: str, doc: Doc[Any] | None = None
    ) -> CrdtClient:
        client = CrdtClient(crdt_url(base_url, room), doc or Doc(), token=token)
        await client.connect()
        self.python_clients.append(client)
        async with asyncio.timeout(10):
            await client.synced.wait()
        return client

    async def close(self) -> None:
        for client in self.python_clients:
            await client.close()
        for node_client in self.node_clients:
            await node_client.exit()


@pytest.fixture
async def party(yjs_script: Path) -> AsyncIterator[Party]:
    clients = Party(yjs_script)
    yield clients
    await clients.close()


def token(user: str = "alice", **claims: Any) -> str:
    claims.setdefault("workflows", ["*"])
    return mint_token(SECRET, user, **claims)


def as_plain(canvas: dict[str, Any]) -> dict[str, Any]:
    """Numbers as floats (pycrdt reads Yjs integers as floats)."""
    return {k: float(v) if isinstance(v, int) else v for k, v in canvas.items()}


async def converge(room: str, nodes: list[YjsNodeClient], pythons: list[CrdtClient]) -> None:
    """Each client edits; every one of them ends with every edit."""
    for index, client in enumerate(nodes):
        await client.command("set", key=f"node{index}", value=f"from node {index}")
        await client.command("setMany", prefix=f"n{index}-", count=20)
    for index, python in enumerate(pythons):
        canvas = python.doc.get("canvas", type=Map)
        canvas[f"python{index}"] = f"from python {index}"
        for i in range(20):
            canvas[f"p{index}-{i}"] = i
    expected: dict[str, Any] = {}
    for index in range(len(nodes)):
        expected[f"node{index}"] = f"from node {index}"
        expected.update({f"n{index}-{i}": i for i in range(20)})
    for index in range(len(pythons)):
        expected[f"python{index}"] = f"from python {index}"
        expected.update({f"p{index}-{i}": i for i in range(20)})
    for client in nodes:
        await client.command("wait", entries=expected)
    for python in pythons:
        await eventually(lambda p=python: as_plain(canvas_of(p.doc)) == as_plain(expected))
    for client in nodes:
        assert await client.canvas() == expected


async def test_two_yjs_clients_and_a_python_client_converge_through_one_node(
    server_factory: ServerFactory, party: Party
):
    server = await server_factory(crdt_path=":memory:")
    first = await party.yjs(server.url, "7", token("alice"))
    second = await party.yjs(server.url, "7", token("bob"))
    python = await party.python(server.url, "7", token("carol"))
    await converge("7", [first, second], [python])
    # awareness: a yjs client's state reaches the others, and goes when it leaves
    await first.command("awareness", state={"user": "alice", "cursor": [10, 20]})
    first_id = (await first.command("dump"))["clientID"]
    await eventually(lambda: python.peers.get(first_id) == {"user": "alice", "cursor": [10, 20]})
    python.set_awareness({"user": "carol"})

    async def second_sees_carol() -> bool:
        peers = (await second.command("dump"))["peers"]
        return peers.get(str(python.doc.client_id)) == {"user": "carol"}

    async with asyncio.timeout(10):
        while not await second_sees_carol():  # noqa: ASYNC110 - asks the Node client
            await asyncio.sleep(0.05)
    await first.exit()
    await eventually(lambda: first_id not in python.peers)
    room = server.services.documents.rooms.get("7")
    assert room is not None and len(canvas_of(room.doc)) == 2 + 1 + 60


async def test_a_read_only_yjs_client_is_refused_and_still_receives(
    server_factory: ServerFactory, party: Party
):
    server = await server_factory(crdt_path=":memory:")
    writer = await party.python(server.url, "7", token("alice"))
    reader = await party.yjs(server.url, "7", token("rita", read_only=True))
    await reader.command("set", key="forbidden", value="edit")
    await eventually(
        lambda: any("read_only" in e.get("text", "") for e in reader.events if "text" in e)
    )
    writer.doc.get("canvas", type=Map)["allowed"] = "by writer"
    await writer.flush()
    await reader.command("wait", entries={"allowed": "by writer"})
    stored = await server.services.documents.rooms.store.load("7")
    doc: Doc[Any] = Doc()
    for part in stored.parts():
        doc.apply_update(part)
    assert canvas_of(doc) == {"allowed": "by writer"}
    assert canvas_of(writer.doc) == {"allowed": "by writer"}
    # the connection stayed open: no close event
    assert not [e for e in reader.events if e.get("event") == "close"]


@contextlib.asynccontextmanager
async def two_redis_nodes(server_factory: ServerFactory) -> AsyncIterator[list[RunningServer]]:
    url = redis_url()
    prefix = f"lpyjs-{uuid.uuid4().hex[:8]}"
    nodes = [
        await server_factory(engine="redis", redis_url=url, redis_prefix=prefix) for _ in range(2)
    ]
    yield nodes


async def test_clients_on_two_nodes_converge_live(server_factory: ServerFactory, party: Party):
    async with two_redis_nodes(server_factory) as (node_a, node_b):
        first = await party.yjs(node_a.url, "9", token("alice"))
        second = await party.yjs(node_b.url, "9", token("bob"))
        python = await party.python(node_b.url, "9", token("carol"))
        await converge("9", [first, second], [python])
        # awareness crosses nodes too
        await first.command("awareness", state={"user": "alice"})
        first_id = (await first.command("dump"))["clientID"]
        await eventually(lambda: python.peers.get(first_id) == {"user": "alice"})
        # a client joining node B later gets node A's clients' awareness at once
        late = await party.python(node_b.url, "9", token("dave"))
        await eventually(lambda: late.peers.get(first_id) == {"user": "alice"})
        await first.exit()
        await eventually(lambda: first_id not in python.peers)


async def test_a_killed_sqlite_server_restarts_with_every_edit_a_client_had(
    party: Party, tmp_path: Path
):
    env = {"LIVEPUSH_JWT_SECRET": SECRET, "LIVEPUSH_CRDT_PATH": str(tmp_path / "docs.sqlite3")}
    async with serve_process(env=env) as server:
        writer = await party.yjs(server.url, "5", token("alice"))
        watcher = await party.python(server.url, "5", token("bob"))
        await writer.command("setMany", prefix="k", count=200)
        expected = {f"k{i}": float(i) for i in range(200)}
        # acknowledged: another client received them (through the server)
        await eventually(lambda: canvas_of(watcher.doc) == expected)
        server.kill()
        await server.process.wait()
    async with serve_process(env=env) as restarted:
        fresh = await party.python(restarted.url, "5", token("carol"))
        assert canvas_of(fresh.doc) == expected
        # the Yjs client reconnects to the new server and keeps working with it
        await writer.command(
            "reconnect", serverUrl=restarted.url.replace("http", "ws") + "/rest/crdt"
        )
        await writer.command("set", key="after", value="restart")
        await eventually(lambda: canvas_of(fresh.doc).get("after") == "restart")


async def test_when_one_of_two_nodes_dies_every_acknowledged_edit_is_on_the_other(
    party: Party,
):
    url = redis_url()
    env = {
        "LIVEPUSH_ENGINE": "redis",
        "LIVEPUSH_REDIS_URL": url,
        "LIVEPUSH_REDIS_PREFIX": f"lpyjs-{uuid.uuid4().hex[:8]}",
        "LIVEPUSH_JWT_SECRET": SECRET,
    }
    async with serve_process(env=env) as node_a, serve_process(env=env) as node_b:
        on_a = await party.yjs(node_a.url, "11", token("alice"))
        python_on_a = await party.python(node_a.url, "11", token("bob"))
        watcher_on_b = await party.python(node_b.url, "11", token("carol"))
        await on_a.command("setMany", prefix="a", count=100)
        python_canvas = python_on_a.doc.get("canvas", type=Map)
        for i in range(100):
            python_canvas[f"p{i}"] = i
        expected = {f"a{i}": float(i) for i in range(100)} | {f"p{i}": float(i) for i in range(100)}
        # acknowledged: the client on the other node has them
        await eventually(lambda: canvas_of(watcher_on_b.doc) == expected)
        node_a.kill()
        await node_a.process.wait()
        # everyone moves to node B: the Yjs client by reconnecting, the Python client with a
        # new connection on the same document
        await on_a.command("reconnect", serverUrl=node_b.url.replace("http", "ws") + "/rest/crdt")
        moved = await party.python(node_b.url, "11", token("bob"), doc=python_on_a.doc)
        await on_a.command("set", key="after", value="kill")
        python_canvas["after python"] = "kill"
        await moved.flush()
        final = expected | {"after": "kill", "after python": "kill"}
        await eventually(lambda: canvas_of(watcher_on_b.doc) == final)
        fresh = await party.python(node_b.url, "11", token("dave"))
        assert canvas_of(fresh.doc) == final
        await on_a.command("wait", entries={"after python": "kill", "a99": 99, "p99": 99})
