"""CRDT documents across nodes with the Redis engine, with Python clients only (the Node
clients are in tests/interop/test_yjs_interop.py): two in-process nodes on one Redis, and the
store on a real Redis Cluster (a document's keys in one slot, plain pub/sub across primaries)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pycrdt import Doc, Map

from livepush.client.crdt import CrdtClient, crdt_url
from livepush.engines.documents import StoreSettings
from livepush.engines.redis import RedisDocumentStore
from tests.conftest import RunningServer, ServerFactory, redis_url
from tests.crdt.crdt_support import canvas_of, content, eventually


async def open_client(server: RunningServer, user: str, **claims: Any) -> CrdtClient:
    client = CrdtClient(crdt_url(server.url, "1"), Doc(), token=server.token(user, **claims))
    await client.connect()
    async with asyncio.timeout(10):
        await client.synced.wait()
    return client


async def test_clients_on_two_nodes_edit_one_document(server_factory: ServerFactory):
    url, prefix = redis_url(), f"lpcrdt-{uuid.uuid4().hex[:8]}"
    node_a, node_b = [
        await server_factory(
            engine="redis", redis_url=url, redis_prefix=prefix, crdt_compact_updates=20
        )
        for _ in range(2)
    ]
    alice = await open_client(node_a, "alice")
    bob = await open_client(node_b, "bob")
    rita = await open_client(node_b, "rita", read_only=True)
    try:
        alice_canvas = alice.doc.get("canvas", type=Map)
        bob_canvas = bob.doc.get("canvas", type=Map)
        for i in range(50):  # past the compaction threshold: snapshots happen meanwhile
            alice_canvas[f"a{i}"] = i
            bob_canvas[f"b{i}"] = i
        rita.doc.get("canvas", type=Map)["r"] = "refused"
        await alice.flush()
        await bob.flush()
        await rita.flush()
        expected = {f"a{i}": i for i in range(50)} | {f"b{i}": i for i in range(50)}
        for client in (alice, bob):
            await eventually(lambda c=client: canvas_of(c.doc) == expected)
        await eventually(
            lambda: {k: v for k, v in canvas_of(rita.doc).items() if k != "r"} == expected
        )
        assert rita.denied == ["read_only"]
        # awareness crosses nodes, and leaves with its connection
        alice.set_awareness({"name": "Alice"})
        await eventually(lambda: bob.peers == {alice.doc.client_id: {"name": "Alice"}})
        await alice.close()
        await eventually(lambda: bob.peers == {})
        # a third node's view (a fresh load) has it all, from the snapshot and what is after it
        store = node_a.services.documents.rooms.store
        assert content((await store.load("1")).parts()) == {
            k: str(float(v)) for k, v in expected.items()
        }
        assert (await store.stats("1")).snapshot_bytes > 0
    finally:
        for client in (alice, bob, rita):
            await client.close()


async def test_the_store_on_a_redis_cluster(redis_cluster: Any):
    prefix = f"lpcrdt-{uuid.uuid4().hex[:6]}"
    settings = StoreSettings(compact_updates=5)
    writer = RedisDocumentStore(redis_cluster.url, settings, prefix=prefix, cluster=True)
    reader = RedisDocumentStore(redis_cluster.url, settings, prefix=prefix, cluster=True)
    await writer.start()
    await reader.start()
    try:
        received: dict[str, list[bytes]] = {}
        reader.on_updates = lambda doc_id, updates: received.setdefault(doc_id, []).extend(updates)
        docs = [f"doc{i}" for i in range(12)]  # over several slots and primaries
        for doc_id in docs:
            await reader.load(doc_id)
        for n in range(8):
            for doc_id in docs:
                edit: Doc[Any] = Doc()
                edit.get("canvas", type=Map)[f"k{n}"] = doc_id
                await writer.append(doc_id, edit.get_update())
        # (the scripts name two keys of a document: on a cluster they would fail with
        # CROSSSLOT unless both are in one slot)
        for doc_id in docs:
            wanted = {f"k{n}": doc_id for n in range(8)}
            await eventually(lambda d=doc_id, w=wanted: content(received.get(d, [])) == w)
            await writer.compact(doc_id)
            assert content((await reader.load(doc_id)).parts()) == wanted
    finally:
        await writer.close()
        await reader.close()
