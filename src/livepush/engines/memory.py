"""The embedded single-node engine: history and presence in process memory.

Publishing is synchronous under the hood (no await between assigning an offset, appending to
history and handing the publication to the node), which is what makes it atomic per channel.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any

from livepush.engines.base import Broker, Engine, PresenceStore, Recovery
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
        stream = self._stream(publication.channel)
        stream.offset += 1
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


def memory_engine(
    *, history_size: int = 1000, history_ttl: float = 300.0, stream_ttl: float = 3600.0
) -> Engine:
    """The embedded default engine."""
    return Engine(
        MemoryBroker(history_size=history_size, history_ttl=history_ttl, stream_ttl=stream_ttl),
        MemoryPresence(),
    )
