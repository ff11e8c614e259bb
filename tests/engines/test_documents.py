"""The document store contract, run against SQLite (in memory and in a file) and Redis: durable
appends, size limit, compaction that keeps the content, and (Redis) other nodes' updates
arriving without gaps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pycrdt import Doc, Map

from livepush.engines.documents import DocumentStore, DocumentTooLarge, StoreSettings, squash
from livepush.engines.redis import RedisDocumentStore
from livepush.engines.sqlite import SqliteDocumentStore
from tests.conftest import redis_url
from tests.crdt.crdt_support import content, eventually

StoreFactory = Callable[..., DocumentStore]


@pytest.fixture(params=["sqlite-memory", "sqlite-file", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Stores of one kind sharing one location (several Redis stores act as several nodes)."""
    stores: list[DocumentStore] = []
    prefix = f"lpcrdt-{uuid.uuid4().hex[:8]}"
    url = redis_url() if request.param == "redis" else ""
    shared: dict[str, Any] = {}

    def make(**settings: Any) -> DocumentStore:
        store: DocumentStore
        if request.param == "sqlite-memory":
            assert not shared, "one in-memory SQLite store per test"
            shared["memory"] = True
            store = SqliteDocumentStore(":memory:", StoreSettings(**settings))
        elif request.param == "sqlite-file":
            store = SqliteDocumentStore(str(tmp_path / "docs.sqlite3"), StoreSettings(**settings))
        else:
            store = RedisDocumentStore(url, StoreSettings(**settings), prefix=prefix)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
    if url:
        await _delete_keys(url, prefix)


async def _delete_keys(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    keys = [key async for key in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def redis_nodes() -> AsyncIterator[Callable[..., RedisDocumentStore]]:
    """Redis stores sharing one key prefix: several nodes of one cluster."""
    url, prefix = redis_url(), f"lpcrdt-{uuid.uuid4().hex[:8]}"
    stores: list[RedisDocumentStore] = []

    def make(**settings: Any) -> RedisDocumentStore:
        stores.append(RedisDocumentStore(url, StoreSettings(**settings), prefix=prefix))
        return stores[-1]

    yield make
    for store in stores:
        await store.close()
    await _delete_keys(url, prefix)


def edits(count: int, *, size: int = 10) -> tuple[list[bytes], dict[str, str]]:
    """`count` updates of one client setting keys of a map, and the content they make."""
    doc: Doc = Doc()
    canvas = doc.get("canvas", type=Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        canvas[f"k{i % 7}"] = f"{i}-" + "x" * size
    return updates, {k: str(v) for k, v in canvas.to_py().items()}


async def test_appended_updates_load_back_in_order(make_store: StoreFactory):
    store = make_store()
    await store.start()
    updates, expected = edits(20)
    size = 0
    for update in updates:
        size = await store.append("doc1", update)
    assert size == sum(map(len, updates))
    loaded = await store.load("doc1")
    assert loaded.snapshot is None
    assert loaded.updates == updates
    assert content(loaded.parts()) == expected
    assert (await store.load("other")).parts() == []
    stats = await store.stats("doc1")
    assert (stats.bytes, stats.updates, stats.snapshot_bytes) == (size, 20, 0)


async def test_concurrent_appends_are_all_stored(make_store: StoreFactory):
    """200 clients' updates at once (their order is free)."""
    store = make_store()
    await store.start()
    updates = []
    for i in range(200):
        doc: Doc = Doc()
        doc.get("canvas", type=Map)[f"client{i}"] = "x"
        updates.append(doc.get_update())
    await asyncio.gather(*(store.append("doc1", u) for u in updates))
    assert content((await store.load("doc1")).parts()) == {f"client{i}": "x" for i in range(200)}
    if isinstance(store, SqliteDocumentStore):
        # group commit: 200 appends waiting together did not take 200 commits
        assert store.appends == 200 and store.commits < 200


async def test_an_update_past_the_document_limit_is_refused_and_not_stored(
    make_store: StoreFactory,
):
    store = make_store(max_doc_bytes=1000)
    await store.start()
    updates, _ = edits(3, size=400)
    await store.append("doc1", updates[0])
    await store.append("doc1", updates[1])
    with pytest.raises(DocumentTooLarge) as refused:
        await store.append("doc1", updates[2])
    assert refused.value.limit == 1000 and refused.value.size > 1000
    # (the two updates may have been compacted meanwhile: they weigh over a quarter of it)
    assert content((await store.load("doc1")).parts()) == content(updates[:2])
    assert (await store.stats("doc1")).bytes <= 1000


async def test_compaction_merges_updates_into_a_snapshot_and_keeps_the_content(
    make_store: StoreFactory,
):
    store = make_store(compact_updates=10)
    await store.start()
    compacted: list[str] = []
    store.on_compacted = compacted.append
    updates, expected = edits(100)
    for update in updates:
        await store.append("doc1", update)
    async with asyncio.timeout(10):  # Redis compacts in the background
        while (await store.stats("doc1")).updates > 10:  # noqa: ASYNC110 - polls Redis
            await asyncio.sleep(0.01)
    loaded = await store.load("doc1")
    assert loaded.snapshot is not None
    assert len(loaded.updates) <= 10
    assert content(loaded.parts()) == expected
    stats = await store.stats("doc1")
    assert stats.snapshot_bytes == len(loaded.snapshot)
    assert stats.bytes == len(loaded.snapshot) + sum(map(len, loaded.updates))
    # overwritten values were garbage collected: far smaller than what was appended
    assert stats.bytes < sum(map(len, updates)) / 2
    assert compacted and set(compacted) == {"doc1"}
    # a forced compaction leaves no update at all (it says False when a background one got
    # there first)
    async with asyncio.timeout(10):
        while (await store.stats("doc1")).updates:
            await store.compact("doc1")
    assert not await store.compact("doc1")
    again = await store.load("doc1")
    assert again.updates == [] and content(again.parts()) == expected


def test_squash_keeps_updates_whose_dependencies_are_missing():
    updates, expected = edits(5)
    squashed = squash(updates[1:])  # the first update is missing
    assert content([squashed, updates[0]]) == expected


async def test_other_nodes_updates_arrive_through_the_feed(
    redis_nodes: Callable[..., RedisDocumentStore],
):
    node_a, node_b = redis_nodes(), redis_nodes()
    await node_a.start()
    await node_b.start()
    received: list[bytes] = []
    node_b.on_updates = lambda doc_id, updates: received.extend(updates)
    await node_b.load("doc1")
    updates, expected = edits(30)
    for update in updates:
        await node_a.append("doc1", update)
    await eventually(lambda: content(received) == expected)
    # node B's own appends are not handed back to it
    own, _ = edits(1)
    before = len(received)
    await node_b.append("doc1", own[0])
    await node_a.append("doc1", updates[0])
    await eventually(lambda: len(received) != before)
    assert own[0] not in received[before:]


async def test_an_update_whose_announcement_was_lost_is_read_from_the_stream(
    redis_nodes: Callable[..., RedisDocumentStore],
):
    """A writer whose pub/sub message nobody receives (as when it is lost): the reader's
    periodic check finds the gap and reads it; the next announced update fills it too."""
    writer, reader = redis_nodes(), redis_nodes()
    await writer.start()
    await reader.start()
    received: list[bytes] = []
    reader.on_updates = lambda doc_id, updates: received.extend(updates)
    await reader.load("doc1")
    updates, expected = edits(3)
    # the append script with a pub/sub channel nobody listens to
    await writer._scripts["append"](
        keys=writer._keys("doc1"), args=[updates[0], 10**9, "nobody-listens"]
    )
    await asyncio.sleep(0.1)
    assert received == []
    reader.check_all()
    await eventually(lambda: received == [updates[0]])
    await writer._scripts["append"](
        keys=writer._keys("doc1"), args=[updates[1], 10**9, "nobody-listens"]
    )
    await writer.append("doc1", updates[2])  # announced: its previous id is not the cursor
    await eventually(lambda: content(received) == expected)


async def test_a_node_behind_a_compaction_gets_the_snapshot(
    redis_nodes: Callable[..., RedisDocumentStore],
):
    writer, reader = redis_nodes(compact_updates=5), redis_nodes(compact_updates=5)
    await writer.start()
    await reader.start()
    received: list[bytes] = []
    reader.on_updates = lambda doc_id, updates: received.extend(updates)
    await reader.load("doc1")
    updates, expected = edits(20)
    for update in updates:  # none announced, then compacted: the reader's cursor is behind
        await writer._scripts["append"](
            keys=writer._keys("doc1"), args=[update, 10**9, "nobody-listens"]
        )
    assert await writer.compact("doc1")
    reader.check_all()
    await eventually(lambda: content(received) == expected)
