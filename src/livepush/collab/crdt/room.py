"""Rooms: the open CRDT documents of this node, each with its connections and awareness.

A room is opened by its first connection (concurrent openings of one document wait for one
load: one lock per document) and unloaded `unload_delay` seconds after its last connection
left. Its `Doc` holds exactly what the store holds: a client's update is stored first
(`DocumentStore.append`), then applied and passed to the other connections; updates stored by
other nodes come from the store's feed. Awareness is relayed to every connection of the room
(the sender too: a y-websocket client alone in a room must hear something every 30 s, and its
own renewals are that), and, in a cluster, to the other nodes, once per `awareness_tick` with
the latest state per client id; it is never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

import msgspec
from pycrdt import Doc, get_update, merge_updates

from livepush.collab.crdt.awareness import AwarenessTable
from livepush.collab.crdt.metrics import CrdtMetrics
from livepush.engines.documents import DocumentStore
from livepush.protocol.crdt import (
    EMPTY_UPDATE,
    AwarenessEntry,
    Dialect,
    encode_awareness,
)

log = logging.getLogger(__name__)

#: Seconds between sweeps of awareness states that were not renewed.
AWARENESS_SWEEP = 3.0


class Peer(Protocol):
    """What a room needs of a connection."""

    dialect: Dialect
    user_id: str

    def send(self, frame: bytes) -> None:
        """Queue a frame to the client (never blocks)."""
        ...


class Room:
    """One open document on this node."""

    __slots__ = (
        "_awareness_timer",
        "_pending_awareness",
        "_pending_relay",
        "_rooms",
        "awareness",
        "doc",
        "doc_id",
        "peers",
        "unload_timer",
    )

    def __init__(self, doc_id: str, rooms: Rooms, parts: list[bytes]) -> None:
        self.doc_id = doc_id
        self._rooms = rooms
        self.doc: Doc[Any] = Doc()
        if parts:
            # one merged update: yrs integrates a long run of out-of-order updates of one
            # client only when they come together
            self._integrate(merge_updates(*parts))
        self.peers: set[Peer] = set()
        self.awareness = AwarenessTable()
        self.unload_timer: asyncio.TimerHandle | None = None
        # awareness accepted since the last tick, latest per client id (to send to the local
        # connections, and the part to relay to other nodes with the user it belongs to)
        self._pending_awareness: dict[int, AwarenessEntry] = {}
        self._pending_relay: dict[int, tuple[AwarenessEntry, str]] = {}
        self._awareness_timer: asyncio.TimerHandle | None = None

    # -- the document ------------------------------------------------------------------------

    def state_vector(self) -> bytes:
        """What the room has (the payload of its sync step 1)."""
        return self.doc.get_state()

    def missing(self, state_vector: bytes) -> bytes:
        """What a peer with `state_vector` lacks (the payload of a sync step 2)."""
        return self.doc.get_update(state_vector)

    def full_state(self) -> bytes:
        """The whole document as one update."""
        return self.doc.get_update()

    def novel(self, update: bytes) -> bytes:
        """`update` without the structs the room already has (deletions are kept)."""
        return get_update(update, self.doc.get_state())

    async def submit(self, update: bytes, origin: Peer) -> bool:
        """Store a client's update, then apply it and pass it on; False if it held nothing
        new. Raises what `DocumentStore.append` raises (then nothing is applied)."""
        novel = self.novel(update)
        if novel == EMPTY_UPDATE:
            return False
        metrics = self._rooms.metrics
        await self._rooms.store.append(self.doc_id, novel)
        metrics.stored_bytes.inc(len(novel))
        metrics.updates.labels("applied").inc()
        self._apply(novel, exclude=origin)
        return True

    def apply_remote(self, updates: list[bytes]) -> None:
        """Updates another node stored."""
        self._rooms.metrics.remote_updates.inc(len(updates))
        novel = self.novel(updates[0] if len(updates) == 1 else merge_updates(*updates))
        if novel != EMPTY_UPDATE:
            self._apply(novel, exclude=None)

    def _apply(self, update: bytes, exclude: Peer | None) -> None:
        self._integrate(update)
        frames: dict[Dialect, bytes] = {}
        for peer in list(self.peers):
            if peer is exclude:
                continue
            frame = frames.get(peer.dialect)
            if frame is None:
                frame = frames[peer.dialect] = peer.dialect.update(update)
            peer.send(frame)

    def _integrate(self, update: bytes) -> None:
        try:
            self.doc.apply_update(update)
        except Exception:  # stored and checked before: a bug (or a yrs limitation), not input
            log.exception("applying an update to CRDT document %s failed", self.doc_id)

    # -- awareness ---------------------------------------------------------------------------

    def receive_awareness(self, entries: list[AwarenessEntry], peer: Peer) -> None:
        """A local client's awareness update: apply, pass on (to the sender too), relay."""
        accepted = self.awareness.apply(
            entries, user_id=peer.user_id, owner=peer, now=time.monotonic()
        )
        if accepted:
            self._pass_on(accepted, relay_as=peer.user_id)

    def receive_remote_awareness(self, payload: bytes) -> None:
        """Awareness relayed by another node: `[[clientID, clock, userId, state], ...]`."""
        try:
            items = msgspec.json.decode(payload, type=list[tuple[int, int, str, str]])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("bad awareness relay for %s: %s", self.doc_id, exc)
            return
        now = time.monotonic()
        accepted = []
        for client_id, clock, user_id, state in items:
            entry = AwarenessEntry(client_id, clock, state)
            accepted += self.awareness.apply([entry], user_id=user_id, owner=None, now=now)
        if accepted:
            self._pass_on(accepted, relay_as=None)

    def awareness_frame(self, dialect: Dialect) -> bytes | None:
        """Every known state, for a client that joins or asks; None when there is none."""
        entries = self.awareness.entries()
        return dialect.awareness(encode_awareness(entries)) if entries else None

    def leave(self, peer: Peer) -> None:
        """A connection closed: its clients are gone for everyone."""
        self.peers.discard(peer)
        removals = self.awareness.remove(self.awareness.owned_by(peer), time.monotonic())
        if removals:
            self._pass_on(removals, relay_as=peer.user_id)

    def expire_awareness(self, now: float) -> None:
        """Drop the states that were not renewed in time (told to local clients only: every
        node expires its own copy)."""
        removals = self.awareness.expire(now)
        if removals:
            self._pass_on(removals, relay_as=None)

    def _pass_on(self, entries: list[AwarenessEntry], *, relay_as: str | None) -> None:
        """Send accepted awareness to the room's connections and (`relay_as`: the user of a
        local client) to the other nodes: at once, or, with an awareness tick, the latest
        state per client id once per tick (a client moving its cursor 30 times a second costs
        each other connection one message per tick, not 30, and every state still arrives)."""
        if self._rooms.awareness_tick <= 0:
            self._broadcast_awareness(entries)
            if relay_as is not None:
                self._rooms.relay_awareness(self.doc_id, [(e, relay_as) for e in entries])
            return
        for entry in entries:
            self._pending_awareness[entry.client_id] = entry
            if relay_as is not None:
                self._pending_relay[entry.client_id] = (entry, relay_as)
        if self._awareness_timer is None:
            self._awareness_timer = asyncio.get_running_loop().call_later(
                self._rooms.awareness_tick, self._send_awareness
            )

    def _send_awareness(self) -> None:
        self._awareness_timer = None
        entries, self._pending_awareness = list(self._pending_awareness.values()), {}
        relay, self._pending_relay = list(self._pending_relay.values()), {}
        if self._rooms.get(self.doc_id) is not self:
            return  # unloaded meanwhile
        if entries:
            self._broadcast_awareness(entries)
        if relay:
            self._rooms.relay_awareness(self.doc_id, relay)

    def _broadcast_awareness(self, entries: list[AwarenessEntry]) -> None:
        payload = encode_awareness(entries)
        frames: dict[Dialect, bytes] = {}
        for peer in list(self.peers):
            frame = frames.get(peer.dialect)
            if frame is None:
                frame = frames[peer.dialect] = peer.dialect.awareness(payload)
            peer.send(frame)


class Rooms:
    """The rooms of this node and the store behind them."""

    def __init__(
        self,
        store: DocumentStore,
        metrics: CrdtMetrics,
        *,
        unload_delay: float = 10.0,
        awareness_tick: float = 0.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.unload_delay = unload_delay
        #: Awareness is passed on once per this many seconds, latest per client (0: at once).
        self.awareness_tick = awareness_tick
        self._rooms: dict[str, Room] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        #: Documents loaded from the store (tests check that concurrent opens load once).
        self.loads = 0
        store.on_updates = self._on_remote_updates
        store.on_awareness = self._on_remote_awareness
        store.on_awareness_query = self._on_awareness_query
        store.on_compacted = self._on_compacted

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, doc_id: str) -> Room | None:
        """The open room of a document."""
        return self._rooms.get(doc_id)

    async def start(self) -> None:
        """Start the store and the awareness sweeper."""
        await self.store.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Unload every room and close the store (connections are closed before)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._tasks):
            task.cancel()
        for doc_id, room in list(self._rooms.items()):
            if room.unload_timer is not None:
                room.unload_timer.cancel()
            del self._rooms[doc_id]
            self.metrics.rooms.dec()
            with contextlib.suppress(Exception):
                await self.store.unload(doc_id)
        await self.store.close()

    @contextlib.asynccontextmanager
    async def _locked(self, doc_id: str) -> Any:
        lock = self._locks.get(doc_id)
        if lock is None:
            lock = self._locks[doc_id] = asyncio.Lock()
        self._lock_users[doc_id] = self._lock_users.get(doc_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            users = self._lock_users[doc_id] - 1
            if users:
                self._lock_users[doc_id] = users
            else:
                del self._lock_users[doc_id]
                del self._locks[doc_id]

    async def join(self, doc_id: str, peer: Peer) -> Room:
        """The document's room with `peer` in it, loading it if needed."""
        async with self._locked(doc_id):
            room = self._rooms.get(doc_id)
            if room is None:
                stored = await self.store.load(doc_id)
                self.loads += 1
                room = await asyncio.to_thread(Room, doc_id, self, stored.parts())
                self._rooms[doc_id] = room
                self.metrics.rooms.inc()
                if self.store.remote:
                    self._spawn(self.store.query_awareness(doc_id))
            if room.unload_timer is not None:
                room.unload_timer.cancel()
                room.unload_timer = None
            room.peers.add(peer)
            return room

    def leave(self, room: Room, peer: Peer) -> None:
        """A connection left its room; an empty room is unloaded after `unload_delay`."""
        room.leave(peer)
        if not room.peers and self._rooms.get(room.doc_id) is room:
            room.unload_timer = asyncio.get_running_loop().call_later(
                self.unload_delay, self._unload_later, room
            )

    def _unload_later(self, room: Room) -> None:
        room.unload_timer = None
        self._spawn(self._unload(room))

    async def _unload(self, room: Room) -> None:
        async with self._locked(room.doc_id):
            if room.peers or self._rooms.get(room.doc_id) is not room:
                return
            del self._rooms[room.doc_id]
            self.metrics.rooms.dec()
            await self.store.unload(room.doc_id)

    # -- what other nodes send ---------------------------------------------------------------

    def _on_remote_updates(self, doc_id: str, updates: list[bytes]) -> None:
        room = self._rooms.get(doc_id)
        if room is not None:
            room.apply_remote(updates)

    def _on_remote_awareness(self, doc_id: str, payload: bytes) -> None:
        room = self._rooms.get(doc_id)
        if room is not None:
            room.receive_remote_awareness(payload)

    def _on_awareness_query(self, doc_id: str) -> None:
        room = self._rooms.get(doc_id)
        if room is None:
            return
        entries = room.awareness.entries(local=True)
        if entries:
            items = [
                [e.client_id, e.clock, room.awareness.user_of(e.client_id), e.state]
                for e in entries
            ]
            self._spawn(self.store.publish_awareness(doc_id, msgspec.json.encode(items)))

    def _on_compacted(self, doc_id: str) -> None:
        self.metrics.compactions.inc()

    def relay_awareness(self, doc_id: str, entries: list[tuple[AwarenessEntry, str]]) -> None:
        """Pass accepted awareness (each entry with its client's user) to the other nodes."""
        if self.store.remote:
            items = [[e.client_id, e.clock, user_id, e.state] for e, user_id in entries]
            self._spawn(self.store.publish_awareness(doc_id, msgspec.json.encode(items)))

    # -- background --------------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(AWARENESS_SWEEP)
            now = time.monotonic()
            for room in list(self._rooms.values()):
                room.expire_awareness(now)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("CRDT background work failed: %s", task.exception())
