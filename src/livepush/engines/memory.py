"""The embedded single-node engine: history and presence in process memory (its CRDT documents
are on disk: `sqlite.py`).

Publishing is synchronous under the hood (no await between assigning an offset, appending to
history and handing the publication to the node), which is what makes it atomic per channel.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from livepush.engines.base import (
    Broker,
    Engine,
    ExecutionState,
    ExecutionStore,
    LockGrant,
    LockStore,
    PresenceStore,
    Recovery,
    with_sequence,
)
from livepush.engines.documents import StoreSettings
from livepush.engines.sqlite import DEFAULT_PATH, SqliteDocumentStore
from livepush.protocol.envelope import Priority, Publication, StreamPosition


def new_epoch() -> str:
    """A fresh random epoch."""
    return secrets.token_hex(6)


class _Stream:
    __slots__ = ("epoch", "history", "offset", "touched")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.offset = 0
        self.history: deque[Publication] = deque()
        self.touched = time.monotonic()


class MemoryBroker(Broker):
    """In-process broker with bounded per-channel history (by count and by age)."""

    def __init__(
        self, *, history_size: int = 1000, history_ttl: float = 300.0, stream_ttl: float = 3600.0
    ) -> None:
        super().__init__()
        self._history_size = history_size
        self._history_ttl = history_ttl
        # A stream's epoch and offset outlive its history, so a client that missed nothing
        # still recovers after the history aged out; idle streams are forgotten after this.
        self._stream_ttl = max(stream_ttl, history_ttl)
        self._streams: dict[str, _Stream] = {}
        self._last_sweep = time.monotonic()
        # Channels that were never published to have no stream (a subscriber alone costs
        # nothing here): they stand at offset 0 of the broker's current epoch, and a stream
        # created later starts from there. Forgetting a stream rotates the epoch, so a stream
        # created again can never be mistaken for the one that was forgotten.
        self._epoch = new_epoch()

    async def publish(self, publication: Publication) -> Publication:
        """See `Broker.publish`."""
        if publication.priority is Priority.EPHEMERAL:
            self._handler(publication)
            return publication
        return self.place(publication)

    def place(self, publication: Publication, *, sequence: bool = False) -> Publication:
        """Publish a reliable publication, synchronously (with `sequence`: see
        `ExecutionStore.publish`)."""
        stream = self._stream(publication.channel)
        stream.offset += 1
        if sequence:
            publication = Publication(
                publication.channel,
                publication.type,
                with_sequence(publication.data, stream.offset),
                published_at=publication.published_at,
            )
        placed = publication.with_position(stream.offset, stream.epoch)
        history = stream.history
        history.append(placed)
        if len(history) > self._history_size:
            history.popleft()
        self._trim(stream, placed.published_at)
        self._handler(placed)
        return placed

    async def subscribe(self, channel: str) -> None:
        """Nothing to do in process: every publication reaches the node's handler."""

    async def unsubscribe(self, channel: str) -> None:
        """Nothing to do in process."""

    async def position(self, channel: str) -> StreamPosition:
        """See `Broker.position`."""
        stream = self._streams.get(channel)
        if stream is None:
            return StreamPosition(self._epoch, 0)
        return StreamPosition(stream.epoch, stream.offset)

    async def recover(self, channel: str, since: StreamPosition, limit: int) -> Recovery:
        """See `Broker.recover`."""
        stream = self._streams.get(channel)
        if stream is None:
            top = StreamPosition(self._epoch, 0)
            return Recovery(top, [], since == top)
        self._trim(stream, time.time())
        top = StreamPosition(stream.epoch, stream.offset)
        if since.epoch != stream.epoch or since.offset > stream.offset:
            return Recovery(top, [], False)
        missed = stream.offset - since.offset
        if missed == 0:
            return Recovery(top, [], True)
        history = stream.history
        if missed > limit or missed > len(history):
            return Recovery(top, [], False)
        return Recovery(top, list(history)[len(history) - missed :], True)

    def _stream(self, channel: str) -> _Stream:
        now = time.monotonic()
        if now - self._last_sweep > 60.0:
            self._sweep(now)
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(self._epoch)
        stream.touched = now
        return stream

    def _trim(self, stream: _Stream, now: float) -> None:
        history = stream.history
        cutoff = now - self._history_ttl
        while history and history[0].published_at < cutoff:
            history.popleft()

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        idle = [name for name, s in self._streams.items() if now - s.touched > self._stream_ttl]
        for name in idle:
            del self._streams[name]
        if idle:
            self._epoch = new_epoch()

    @property
    def stream_count(self) -> int:
        """How many channel streams are held (for tests and metrics)."""
        return len(self._streams)


class MemoryPresence(PresenceStore):
    """In-process presence with lazy expiry."""

    def __init__(self) -> None:
        self._claims: dict[str, tuple[str, float]] = {}
        self._members: dict[str, dict[str, tuple[dict[str, Any], float]]] = {}

    async def claim(self, name: str, owner: str, ttl: float) -> bool:
        """See `PresenceStore.claim`."""
        now = time.monotonic()
        held = self._claims.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._claims[name] = (owner, now + ttl)
        if len(self._claims) % 1024 == 0:
            self._claims = {k: v for k, v in self._claims.items() if v[1] > now}
        return True

    async def release(self, name: str, owner: str, ttl: float) -> None:
        """See `PresenceStore.release`."""
        held = self._claims.get(name)
        if held is not None and held[0] == owner:
            if ttl <= 0:
                del self._claims[name]
            else:
                self._claims[name] = (owner, time.monotonic() + ttl)

    async def join(self, channel: str, client_id: str, info: dict[str, Any], ttl: float) -> None:
        """See `PresenceStore.join`."""
        self._members.setdefault(channel, {})[client_id] = (info, time.monotonic() + ttl)

    async def leave(self, channel: str, client_id: str) -> None:
        """See `PresenceStore.leave`."""
        members = self._members.get(channel)
        if members is not None:
            members.pop(client_id, None)
            if not members:
                del self._members[channel]

    async def members(self, channel: str) -> dict[str, dict[str, Any]]:
        """See `PresenceStore.members`."""
        members = self._members.get(channel)
        if not members:
            return {}
        now = time.monotonic()
        expired = [cid for cid, (_, until) in members.items() if until <= now]
        for cid in expired:
            del members[cid]
        return {cid: info for cid, (info, _) in members.items()}


class _Execution:
    __slots__ = ("expires", "fields", "position")

    def __init__(self) -> None:
        self.fields: dict[str, bytes] = {}
        self.position = StreamPosition("", 0)
        self.expires = 0.0


class MemoryExecutions(ExecutionStore):
    """Execution state and outputs in process memory: expiring, and outputs bounded in total
    bytes (the oldest go first; fetching one that went answers `output_not_found`)."""

    def __init__(self, broker: MemoryBroker, *, output_bytes: int = 1024 * 1024 * 1024) -> None:
        self._broker = broker
        self._states: dict[str, _Execution] = {}
        self._outputs: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._output_bytes = 0
        self._output_limit = output_bytes
        self._last_sweep = time.monotonic()

    async def publish(
        self,
        publication: Publication,
        execution_id: str,
        fields: Sequence[tuple[str, bytes]],
        delete: Sequence[str] = (),
        *,
        sequence: bool = False,
        retention: float,
    ) -> Publication:
        """See `ExecutionStore.publish` (no await between publishing and recording)."""
        now = time.monotonic()
        if now - self._last_sweep > 10.0:
            self._sweep(now)
        placed = self._broker.place(publication, sequence=sequence)
        if fields or delete:
            state = self._states.get(execution_id)
            if state is None or state.expires <= now:
                state = self._states[execution_id] = _Execution()
            for name in delete:
                state.fields.pop(name, None)
            state.fields.update(fields)
            state.position = StreamPosition(str(placed.epoch), int(placed.offset or 0))
            state.expires = now + retention
        return placed

    async def state(self, execution_id: str) -> ExecutionState | None:
        """See `ExecutionStore.state`."""
        state = self._states.get(execution_id)
        if state is None or state.expires <= time.monotonic():
            return None
        return ExecutionState(dict(state.fields), state.position)

    async def fields(self, execution_id: str, names: Sequence[str]) -> dict[str, bytes]:
        """See `ExecutionStore.fields`."""
        state = self._states.get(execution_id)
        if state is None or state.expires <= time.monotonic():
            return {}
        return {name: state.fields[name] for name in names if name in state.fields}

    async def put_output(self, execution_id: str, name: str, data: bytes, ttl: float) -> None:
        """See `ExecutionStore.put_output`."""
        key = (execution_id, name)
        old = self._outputs.pop(key, None)
        if old is not None:
            self._output_bytes -= len(old[0])
        self._outputs[key] = (data, time.monotonic() + ttl)
        self._output_bytes += len(data)
        while self._output_bytes > self._output_limit and len(self._outputs) > 1:
            oldest = next(iter(self._outputs))
            self._output_bytes -= len(self._outputs.pop(oldest)[0])

    def _output(self, execution_id: str, name: str) -> bytes | None:
        entry = self._outputs.get((execution_id, name))
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    async def output_size(self, execution_id: str, name: str) -> int | None:
        """See `ExecutionStore.output_size`."""
        data = self._output(execution_id, name)
        return None if data is None else len(data)

    async def read_output(self, execution_id: str, name: str, start: int, end: int) -> bytes:
        """See `ExecutionStore.read_output`."""
        data = self._output(execution_id, name)
        return b"" if data is None else data[start:end]

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        self._states = {k: s for k, s in self._states.items() if s.expires > now}
        for key in [k for k, (_, until) in self._outputs.items() if until <= now]:
            self._output_bytes -= len(self._outputs.pop(key)[0])


class MemoryLocks(LockStore):
    """Locks in process memory (single node); tokens per lock name only ever increase."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[str, str, int, float]] = {}
        self._tokens: dict[str, int] = {}

    def _current(self, name: str) -> tuple[str, str, int, float] | None:
        lock = self._locks.get(name)
        if lock is not None and lock[3] <= time.monotonic():
            del self._locks[name]
            return None
        return lock

    async def acquire(
        self, name: str, holder: str, owner: str, ttl: float, *, takeover: bool = False
    ) -> tuple[bool, LockGrant]:
        """See `LockStore.acquire`."""
        now = time.monotonic()
        current = self._current(name)
        if current is not None:
            if current[0] == holder:
                self._locks[name] = (holder, owner, current[2], now + ttl)
                return True, LockGrant(name, holder, current[1], current[2], ttl)
            if not (takeover and current[1] == owner):
                return False, LockGrant(name, current[0], current[1], current[2], current[3] - now)
        token = self._tokens.get(name, 0) + 1
        self._tokens[name] = token
        self._locks[name] = (holder, owner, token, now + ttl)
        return True, LockGrant(name, holder, owner, token, ttl)

    async def release(self, name: str, holder: str, token: int) -> bool:
        """See `LockStore.release`."""
        current = self._current(name)
        if current is None or current[0] != holder or current[2] != token:
            return False
        del self._locks[name]
        return True

    async def check(self, name: str, token: int) -> bool:
        """See `LockStore.check`."""
        current = self._current(name)
        return current is not None and current[2] == token

    async def holder(self, name: str) -> LockGrant | None:
        """See `LockStore.holder`."""
        current = self._current(name)
        if current is None:
            return None
        return LockGrant(name, current[0], current[1], current[2], current[3] - time.monotonic())


def memory_engine(
    *,
    history_size: int = 1000,
    history_ttl: float = 300.0,
    stream_ttl: float = 3600.0,
    output_bytes: int = 1024 * 1024 * 1024,
    sqlite_path: str = DEFAULT_PATH,
    documents: StoreSettings | None = None,
) -> Engine:
    """The embedded default engine (its documents in the SQLite file `sqlite_path`)."""
    broker = MemoryBroker(history_size=history_size, history_ttl=history_ttl, stream_ttl=stream_ttl)
    return Engine(
        broker,
        MemoryPresence(),
        MemoryExecutions(broker, output_bytes=output_bytes),
        MemoryLocks(),
        SqliteDocumentStore(sqlite_path, documents),
    )
