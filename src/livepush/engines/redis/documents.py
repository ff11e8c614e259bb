"""CRDT documents in Redis (the cluster engine's store): any node serves any document.

Keys of a document `<doc>` share the hash tag `{<doc>}` (one Redis Cluster slot):

- `<prefix>:y:{<doc>}:u`: stream of updates after the snapshot (field `d`);
- `<prefix>:y:{<doc>}:m`: hash: `s` snapshot, `c` newest update id merged into it, `l` newest
  update id, `b` bytes stored (snapshot and updates), `n` updates, `ub` their bytes;
- `<prefix>:y:{<doc>}`: pub/sub channel of the nodes that have the document open:
  `u <previous id> <id> <update>` (sent by `lua/append.lua` in the step that stores it),
  `a <node> <awareness>` and `q <node>` (awareness, never stored; see
  `livepush.collab.crdt.room`).

Each node remembers, per open document, the newest update id it has (its cursor). An update
whose previous id is the cursor is applied at once; any other is a gap (a pub/sub message lost,
for instance while the pub/sub connection was down), and the node reads the stream from its
cursor (`lua/read.lua`, which adds the snapshot when compaction merged updates the node never
saw), so no update is ever skipped. Every few seconds, and after the pub/sub connection comes
back, each document's newest id is compared with the cursor too. Duplicates are harmless: Yjs
ignores updates it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from livepush.engines.base import EngineUnavailable
from livepush.engines.documents import (
    DocumentStats,
    DocumentStore,
    DocumentTooLarge,
    StoredDocument,
    StoreSettings,
    squash,
)
from livepush.engines.redis.client import ScriptClient, load_script, to_text

log = logging.getLogger(__name__)

#: Seconds between the checks that no update was missed.
RESYNC_INTERVAL = 5.0


def _id(text: str) -> tuple[int, int]:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


@dataclass(slots=True)
class _Followed:
    """A document open on this node."""

    #: The newest update id this node has applied ("" while loading).
    cursor: str = ""
    #: Ids this node stored that the cursor has not passed yet (not to be applied twice).
    own: set[str] = field(default_factory=set)
    filling: bool = False
    refill: bool = False

    def advance(self, update_id: str) -> None:
        if not self.cursor or _id(update_id) > _id(self.cursor):
            self.cursor = update_id
        if self.own:
            mark = _id(self.cursor)
            self.own = {i for i in self.own if _id(i) > mark}


@dataclass(frozen=True, slots=True)
class _Read:
    snapshot: bytes
    merged: str
    newest: str
    updates: list[tuple[str, bytes]]


class RedisDocumentStore(ScriptClient, DocumentStore):
    """Documents in Redis, shared by every node of the cluster."""

    remote: ClassVar[bool] = True
    SCRIPTS: ClassVar[dict[str, str]] = {
        "append": load_script("append.lua"),
        "read": load_script("read.lua"),
        "compact": load_script("compact.lua"),
    }

    def __init__(
        self,
        url: str,
        settings: StoreSettings | None = None,
        *,
        prefix: str = "livepush",
        cluster: bool = False,
    ) -> None:
        ScriptClient.__init__(self, url, prefix=prefix, cluster=cluster)
        DocumentStore.__init__(self, settings)
        #: Identifies this node's own awareness messages on the pub/sub channels.
        self.node_id = secrets.token_hex(6)
        self._docs: dict[str, _Followed] = {}
        self._subscriber: Any = None
        self._pubsub: Any = None
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._compacting: set[str] = set()
        self._closing = False

    # -- keys --------------------------------------------------------------------------------

    def _keys(self, doc_id: str) -> list[str]:
        base = f"{self.keys.prefix}:y:{{{doc_id}}}"
        return [f"{base}:u", f"{base}:m"]

    def _channel(self, doc_id: str) -> str:
        return f"{self.keys.prefix}:y:{{{doc_id}}}"

    def _doc_of(self, channel: str) -> str:
        return channel[len(self.keys.prefix) + 4 : -1]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the command side (the pub/sub side opens with the first document)."""
        await ScriptClient.start(self)
        self._resync = asyncio.get_running_loop().create_task(self._check_periodically())

    async def close(self) -> None:
        """Stop following every document and disconnect."""
        self._closing = True
        tasks = [t for t in (self._resync, self._reader, self._reconnecting) if t is not None]
        tasks += list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_subscriber()
        await ScriptClient.close(self)

    # -- documents ---------------------------------------------------------------------------

    async def load(self, doc_id: str) -> StoredDocument:
        """See `DocumentStore.load`: subscribe to the document's channel, then read it."""
        state = self._docs[doc_id] = _Followed()
        try:
            await self._subscribe(doc_id)
            read = await self._read(doc_id, "")
        except BaseException:
            self._docs.pop(doc_id, None)
            with contextlib.suppress(Exception):
                await self._unsubscribe(doc_id)
            raise
        state.advance(read.updates[-1][0] if read.updates else read.merged or "0-0")
        if state.refill:  # updates arrived while loading: read what the load did not see
            self._fill(doc_id, state)
        return StoredDocument(read.snapshot or None, [update for _, update in read.updates])

    async def unload(self, doc_id: str) -> None:
        """See `DocumentStore.unload`."""
        if self._docs.pop(doc_id, None) is not None:
            with contextlib.suppress(EngineUnavailable):
                await self._unsubscribe(doc_id)

    async def append(self, doc_id: str, update: bytes) -> int:
        """See `DocumentStore.append`: one script stores and announces the update."""
        limit = self.settings.max_doc_bytes
        async with self.call():
            result = await self._scripts["append"](
                keys=self._keys(doc_id), args=[update, limit, self._channel(doc_id)]
            )
        if int(result[0]) == 0:
            raise DocumentTooLarge(int(result[1]), limit)
        update_id, previous = to_text(result[1]), to_text(result[2])
        size, updates, update_bytes = int(result[3]), int(result[4]), int(result[5])
        state = self._docs.get(doc_id)
        if state is not None:
            if state.cursor == previous:
                state.advance(update_id)
            else:
                state.own.add(update_id)
        if self.settings.wants_compaction(updates, update_bytes):
            self._compact_later(doc_id)
        return size

    async def compact(self, doc_id: str) -> bool:
        """See `DocumentStore.compact`."""
        read = await self._read(doc_id, "")
        if not read.updates:
            return False
        parts = ([read.snapshot] if read.snapshot else []) + [u for _, u in read.updates]
        snapshot = await asyncio.to_thread(squash, parts)
        merged_bytes = sum(len(u) for _, u in read.updates)
        async with self.call():
            done = await self._scripts["compact"](
                keys=self._keys(doc_id),
                args=[snapshot, read.updates[-1][0], read.merged, merged_bytes],
            )
        if int(done) == 1:
            self.on_compacted(doc_id)
            return True
        return False

    async def stats(self, doc_id: str) -> DocumentStats:
        """See `DocumentStore.stats`."""
        meta = self._keys(doc_id)[1]
        async with self.call():
            size, updates = await self.redis.hmget(meta, ["b", "n"])
            snapshot = await self.redis.hstrlen(meta, "s")
        return DocumentStats(int(size or 0), int(updates or 0), int(snapshot or 0))

    async def publish_awareness(self, doc_id: str, payload: bytes) -> None:
        """See `DocumentStore.publish_awareness`."""
        await self._publish(doc_id, b"a " + self.node_id.encode() + b" " + payload)

    async def query_awareness(self, doc_id: str) -> None:
        """See `DocumentStore.query_awareness`."""
        await self._publish(doc_id, b"q " + self.node_id.encode())

    async def _publish(self, doc_id: str, message: bytes) -> None:
        async with self.call():
            await self.redis.publish(self._channel(doc_id), message)

    async def _read(self, doc_id: str, after: str) -> _Read:
        async with self.call():
            result = await self._scripts["read"](keys=self._keys(doc_id), args=[after])
        updates = [(to_text(result[i]), bytes(result[i + 1])) for i in range(3, len(result), 2)]
        return _Read(bytes(result[0] or b""), to_text(result[1]), to_text(result[2]), updates)

    def _compact_later(self, doc_id: str) -> None:
        if doc_id in self._compacting:
            return
        self._compacting.add(doc_id)

        async def run() -> None:
            try:
                await self.compact(doc_id)
            except Exception as exc:
                log.warning("compacting CRDT document %s failed: %s", doc_id, exc)
            finally:
                self._compacting.discard(doc_id)

        self._spawn(run())

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- following other nodes' updates ------------------------------------------------------

    def _on_update(self, doc_id: str, previous: str, update_id: str, update: bytes) -> None:
        state = self._docs.get(doc_id)
        if state is None:
            return
        if not state.cursor:  # loading: the load or the fill after it reads it
            state.refill = True
            return
        if _id(update_id) <= _id(state.cursor):
            return  # already here
        if previous != state.cursor:
            self._fill(doc_id, state)
            return
        state.advance(update_id)
        if update_id in state.own:
            state.own.discard(update_id)  # stored by this node: already applied
            return
        self.on_updates(doc_id, [update])

    def _fill(self, doc_id: str, state: _Followed) -> None:
        """Read the stream from the document's cursor (once at a time per document)."""
        if state.filling:
            state.refill = True
            return
        state.filling = True
        self._spawn(self._run_fill(doc_id, state))

    async def _run_fill(self, doc_id: str, state: _Followed) -> None:
        try:
            while self._docs.get(doc_id) is state:
                state.refill = False
                read = await self._read(doc_id, state.cursor)
                if self._docs.get(doc_id) is not state:
                    return
                parts = [read.snapshot] if read.snapshot else []
                parts += [u for i, u in read.updates if i not in state.own]
                if read.merged:
                    state.advance(read.merged)
                if read.updates:
                    state.advance(read.updates[-1][0])
                if parts:
                    self.on_updates(doc_id, parts)
                if not state.refill:
                    return
        except EngineUnavailable as exc:
            log.warning("reading CRDT document %s failed (retried): %s", doc_id, exc)
        finally:
            state.filling = False

    async def _check_periodically(self) -> None:
        """Catch any update whose announcement never arrived."""
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            self.check_all()

    def check_all(self) -> None:
        """Compare every open document's newest id with its cursor; fill those behind."""
        for doc_id, state in list(self._docs.items()):
            if state.cursor and not state.filling:
                self._spawn(self._check(doc_id, state))

    async def _check(self, doc_id: str, state: _Followed) -> None:
        try:
            async with self.call():
                newest = await self.redis.hget(self._keys(doc_id)[1], "l")
        except EngineUnavailable:
            return
        if newest and state.cursor and _id(to_text(newest)) > _id(state.cursor):
            self._fill(doc_id, state)

    # -- pub/sub -----------------------------------------------------------------------------

    async def _ensure_subscriber(self) -> Any:
        if self._pubsub is None:
            # Plain PUBLISH/SUBSCRIBE reaches every node of a Redis Cluster, so one connection
            # to the node of the URL serves a cluster too.
            client = aioredis.Redis.from_url(self.url, client_name=f"{self.keys.prefix}-crdt")
            pubsub = client.pubsub()
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                await client.aclose()
                raise
            self._subscriber, self._pubsub = client, pubsub
            self._reader = asyncio.get_running_loop().create_task(self._read_messages(pubsub))
        return self._pubsub

    async def _subscribe(self, doc_id: str) -> None:
        name = self._channel(doc_id)
        confirmed = self._confirmations[name] = asyncio.get_running_loop().create_future()
        try:
            try:
                async with self.call():
                    pubsub = await self._ensure_subscriber()
                    await pubsub.subscribe(name)
                async with asyncio.timeout(10):
                    await asyncio.shield(confirmed)
            except (EngineUnavailable, TimeoutError) as exc:
                # a broken subscriber connection is replaced by the next subscription
                await self._close_subscriber()
                raise EngineUnavailable(f"Redis subscription failed: {exc}") from exc
        finally:
            self._confirmations.pop(name, None)

    async def _unsubscribe(self, doc_id: str) -> None:
        if self._pubsub is not None:
            async with self.call():
                await self._pubsub.unsubscribe(self._channel(doc_id))

    async def _read_messages(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                if message is None:
                    continue
                kind = to_text(message["type"])
                name = to_text(message["channel"])
                if kind == "message":
                    self._on_message(self._doc_of(name), message["data"])
                elif kind == "subscribe":
                    confirmed = self._confirmations.get(name)
                    if confirmed is not None and not confirmed.done():
                        confirmed.set_result(None)
        except (RedisError, OSError) as exc:
            if not self._closing:
                self._lost(exc)

    def _on_message(self, doc_id: str, data: bytes) -> None:
        kind = data[:2]
        if kind == b"u ":
            previous, update_id, update = data[2:].split(b" ", 2)
            self._on_update(doc_id, previous.decode(), update_id.decode(), update)
            return
        node, _, payload = data[2:].partition(b" ")
        if node.decode() == self.node_id or doc_id not in self._docs:
            return
        if kind == b"a ":
            self.on_awareness(doc_id, payload)
        elif kind == b"q ":
            self.on_awareness_query(doc_id)

    def _lost(self, exc: BaseException) -> None:
        if self._reconnecting is not None and not self._reconnecting.done():
            return
        log.warning("CRDT pub/sub connection lost (%s); reconnecting", exc)
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Back off, subscribe every open document again, then read what each missed."""
        attempt = 0
        while not self._closing:
            await self._close_subscriber(reader=False)
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(5.0, 0.1 * 2 ** min(attempt, 10))))
            try:
                pubsub = await self._ensure_subscriber()
                if self._docs:
                    await pubsub.subscribe(*[self._channel(d) for d in self._docs])
            except (RedisError, OSError) as exc:
                log.info("CRDT pub/sub reconnect attempt %d failed: %s", attempt, exc)
                continue
            log.warning("CRDT pub/sub reconnected; reading %d documents", len(self._docs))
            for doc_id, state in list(self._docs.items()):
                if state.cursor:
                    self._fill(doc_id, state)
            return

    async def _close_subscriber(self, *, reader: bool = True) -> None:
        pubsub, client = self._pubsub, self._subscriber
        self._pubsub = self._subscriber = None
        if reader and self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
