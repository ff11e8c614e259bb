"""A session is one connection's server-side state: who it is, what it is subscribed to, and
its bounded outbound queue.

Writes are coalesced per event-loop iteration: the hub stages publications on each session
(`stage`) and flushes every touched session once at the end of the iteration, so the messages
one connection gets in one iteration leave in one socket write (one system call) instead of
one each, with no added latency. While the socket keeps up, that write goes straight into the
transport. Only when the transport pushes back (its buffer is over the high-water mark) do
messages wait in the session's queue, drained by a task that exists only while there is a
backlog. The queue is bounded in messages and bytes; ephemeral publications in it are
coalesced by key and dropped first; when reliable messages alone exceed the bounds, the
connection is closed as a slow consumer, and no other connection notices.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from livepush.core.ratelimit import TokenBucket
from livepush.protocol.envelope import Priority, Publication, StreamPosition
from livepush.protocol.errors import CloseCode

if TYPE_CHECKING:
    from livepush.auth.tokens import Identity
    from livepush.core.metrics import Metrics

log = logging.getLogger(__name__)


class FrameWriter(Protocol):
    """What a transport provides to a session."""

    transport: str
    #: True when the transport needs `encode_mark` calls (SSE event ids carry positions).
    tracks_positions: bool

    def encode(self, publication: Publication) -> bytes:
        """Transport bytes for a publication (cached on the publication where shareable)."""
        ...

    def send(self, publications: Publication | list[Publication]) -> int:
        """The hot path: write one publication, or several in one write, if the socket keeps
        up. Returns `SENT`, `PAUSED` (nothing written: the caller queues them) or `GONE`."""
        ...

    def encode_control(self, payload: bytes) -> bytes:
        """Transport bytes for a control message (reply, error...)."""
        ...

    def encode_mark(self, positions: Mapping[str, StreamPosition | None]) -> bytes:
        """Transport bytes recording the client's positions in these channels (None: the
        client left the channel)."""
        ...

    @property
    def paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark."""
        ...

    def write(self, data: bytes) -> bool:
        """Hand bytes to the transport; False when the connection is already gone."""
        ...

    async def drain(self) -> None:
        """Wait until the transport accepts more data (raises if the connection is lost)."""
        ...

    def ping(self) -> bool:
        """Keep-alive: ping the peer; False when the previous ping was never answered."""
        ...

    def close(self, code: CloseCode, reason: str) -> None:
        """Close the connection (after everything written so far)."""
        ...


#: How long after a release live publications already delivered from history are dropped.
FLOOR_SECONDS = 10.0

#: Results of `FrameWriter.send`.
SENT, PAUSED, GONE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Bounds shared by all sessions of a node."""

    max_queue_messages: int = 1000
    max_queue_bytes: int = 4 * 1024 * 1024
    max_subscriptions: int = 128
    rate: float = 50.0
    burst: float = 100.0


class _Mark:
    __slots__ = ("positions",)

    def __init__(self, positions: Mapping[str, StreamPosition | None]) -> None:
        self.positions = positions


_Payload = Publication | bytes | _Mark


class _Item:
    __slots__ = ("key", "payload", "size")

    def __init__(self, payload: _Payload, size: int, key: tuple[str, str] | None):
        self.payload = payload
        self.size = size
        self.key = key


class Session:
    """One connection (a browser tab, identified by its pushRef)."""

    __slots__ = (
        "_closing",
        "_floors",
        "_flusher",
        "_keyed",
        "_pending",
        "_queue",
        "_queued_bytes",
        "_recovering",
        "channels",
        "close_code",
        "close_reason",
        "closed",
        "deadline",
        "follows",
        "identity",
        "limits",
        "metrics",
        "push_ref",
        "rate",
        "warned",
        "writer",
    )

    def __init__(
        self,
        push_ref: str,
        identity: Identity,
        writer: FrameWriter,
        limits: SessionLimits,
        metrics: Metrics,
    ) -> None:
        self.push_ref = push_ref
        self.identity = identity
        self.writer = writer
        self.limits = limits
        self.metrics = metrics
        #: Explicit subscriptions (own channels are implied), a list: most connections have
        #: a handful, and a list of a few costs a third of a set.
        self.channels: list[str] = []
        self.rate = TokenBucket(limits.rate, limits.burst)
        self.closed = False
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        #: Token expiry bookkeeping of the node's `Deadlines` (a slot key, and whether the
        #: client has been warned).
        self.deadline: int | None = None
        self.warned = False
        # Staged publications of this loop iteration, the backlog queue and its coalescing
        # index, and held channels: all created on first use, so an idle connection has none.
        self._pending: Publication | list[Publication] | None = None
        self._queue: deque[_Item] | None = None
        self._queued_bytes = 0
        self._keyed: dict[tuple[str, str], _Item] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._recovering: dict[str, list[Publication]] | None = None
        #: Per channel just released: the position the client stands at. A broker may hand
        #: over live publications later than the history read that already delivered them
        #: (Redis: the stream is read before the pub/sub message arrives); these are dropped
        #: until the first newer one.
        self._floors: dict[str, StreamPosition] | None = None
        self._closing = False
        #: Channels the server subscribed this connection to on a feature's behalf (the
        #: executions it follows), ended by the server; created on first use.
        self.follows: set[str] | None = None

    @property
    def user_id(self) -> str:
        """The user this connection belongs to."""
        return self.identity.user_id

    @property
    def queued(self) -> tuple[int, int]:
        """Messages and bytes waiting in the outbound queue."""
        return len(self._queue or ()), self._queued_bytes

    # -- outbound ----------------------------------------------------------------------------

    def stage(self, publication: Publication) -> bool:
        """Add a publication to this iteration's batch; True when the session needs a flush
        (it had nothing staged before)."""
        if self.closed:
            return False
        recovering = self._recovering
        if recovering is not None and publication.channel in recovering:
            recovering[publication.channel].append(publication)
            return False
        if self._floors is not None and self._below_floor(publication):
            return False
        pending = self._pending
        if pending is None:
            # The publication itself, not a list: the common single message per iteration
            # allocates nothing per connection (which also keeps the cyclic GC quiet).
            self._pending = publication
            return True
        if isinstance(pending, list):
            pending.append(publication)
        else:
            self._pending = [pending, publication]
        return False

    def flush(self) -> None:
        """Write the staged publications: one socket write if the socket keeps up, else into
        the bounded queue."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if self.closed:
            return
        if self._queue is None:
            result = self.writer.send(pending)
            if result == SENT:
                return
            if result == GONE:
                self._lost()
                return
        if not isinstance(pending, list):
            pending = [pending]
        for publication in pending:
            self._enqueue_publication(publication)

    async def writable(self) -> None:
        """Wait until everything sent so far has reached the transport and the transport is
        below its high-water mark (raises `ConnectionError` if the connection is lost)."""
        while not self.closed:
            if self._flusher is not None:
                await asyncio.wait({self._flusher})
            elif self.writer.paused:
                await self.writer.drain()
            elif self._pending is not None:
                await asyncio.sleep(0)
            else:
                return

    def deliver(self, publication: Publication) -> None:
        """Send one publication now (after anything staged), or queue it."""
        self.stage(publication)
        self.flush()

    def send_control(self, payload: bytes) -> None:
        """Send a control message (reply, error...) in order with publications; never dropped."""
        self._send_in_order(payload, len(payload))

    def mark(self, positions: Mapping[str, StreamPosition | None]) -> None:
        """Record, in stream order, the client's positions in channels (None: left it)."""
        if positions and self.writer.tracks_positions:
            self._send_in_order(_Mark(positions), 0)

    def _send_in_order(self, payload: bytes | _Mark, size: int) -> None:
        """After anything staged: write now if the socket keeps up, else queue (never dropped)."""
        self.flush()
        if self.closed:
            return
        if self._queue is None and not self.writer.paused:
            if not self.writer.write(self._encode(payload)):
                self._lost()
            return
        self._enqueue(payload, size, None)

    def _encode(self, payload: _Payload) -> bytes:
        if isinstance(payload, Publication):
            return self.writer.encode(payload)
        if isinstance(payload, _Mark):
            return self.writer.encode_mark(payload.positions)
        return self.writer.encode_control(payload)

    def _enqueue_publication(self, publication: Publication) -> None:
        key = None
        if publication.priority is Priority.EPHEMERAL and publication.key is not None:
            key = (publication.channel, publication.key)
        self._enqueue(publication, len(publication.payload), key)

    def _enqueue(self, payload: _Payload, size: int, key: tuple[str, str] | None) -> None:
        if self.closed:
            return
        if key is not None and self._keyed is not None:
            queued = self._keyed.get(key)
            if queued is not None:
                if self._queued_bytes - queued.size + size > self.limits.max_queue_bytes:
                    self.metrics.dropped("queue_full")
                    return
                # Latest value wins, in the place the first one held in the queue.
                self._queued_bytes += size - queued.size
                queued.payload, queued.size = payload, size
                self.metrics.dropped("coalesced")
                return
        limits = self.limits
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if (
            len(queue) >= limits.max_queue_messages
            or self._queued_bytes + size > limits.max_queue_bytes
        ):
            if isinstance(payload, Publication) and payload.priority is Priority.EPHEMERAL:
                self.metrics.dropped("queue_full")
                return
            queue = self._drop_ephemeral()
            if (
                len(queue) >= limits.max_queue_messages
                or self._queued_bytes + size > limits.max_queue_bytes
            ):
                self.metrics.dropped("slow_consumer", len(queue) + 1)
                self.close(
                    CloseCode.SLOW_CONSUMER,
                    f"slow consumer: outbound queue over {limits.max_queue_messages} messages"
                    f" or {limits.max_queue_bytes} bytes",
                    flush=False,
                )
                return
        item = _Item(payload, size, key)
        queue.append(item)
        self._queued_bytes += size
        if key is not None:
            if self._keyed is None:
                self._keyed = {}
            self._keyed[key] = item
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._drain_queue())

    def _drop_ephemeral(self) -> deque[_Item]:
        kept: deque[_Item] = deque()
        dropped = 0
        for item in self._queue or ():
            payload = item.payload
            if isinstance(payload, Publication) and payload.priority is Priority.EPHEMERAL:
                dropped += 1
                self._queued_bytes -= item.size
            else:
                kept.append(item)
        self._queue = kept
        if dropped:
            self._keyed = None
            self.metrics.dropped("queue_full", dropped)
        return kept

    async def _drain_queue(self) -> None:
        writer = self.writer
        try:
            while self._queue and not self.closed:
                if writer.paused:
                    await writer.drain()
                    continue
                item = self._queue.popleft()
                self._queued_bytes -= item.size
                if item.key is not None and self._keyed is not None:
                    self._keyed.pop(item.key, None)
                payload = item.payload
                if isinstance(payload, Publication):
                    self.metrics.observe_write_latency(payload)
                if not writer.write(self._encode(payload)):
                    self._lost()
                    return
        except (ConnectionError, RuntimeError):
            self._lost()
            return
        finally:
            self._flusher = None
        if not self._queue:
            # Back to direct writes.
            self._queue = None
            self._keyed = None
        if self._closing and not self.closed:
            self._finish_close()

    def _discard_outbound(self) -> None:
        self._pending = None
        self._queue = None
        self._keyed = None
        self._queued_bytes = 0

    def _lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.close_code = self.close_code or CloseCode.GOING_AWAY
            self.close_reason = self.close_reason or "connection lost"
            self._discard_outbound()

    # -- recovery ----------------------------------------------------------------------------

    def hold(self, channel: str) -> None:
        """Hold live publications of a channel while its missed ones are fetched."""
        if self._recovering is None:
            self._recovering = {}
        self._recovering.setdefault(channel, [])

    def abandon(self, channel: str) -> None:
        """Forget a channel's held publications (its subscription failed)."""
        if self._recovering is not None:
            self._recovering.pop(channel, None)
            if not self._recovering:
                self._recovering = None

    def _below_floor(self, publication: Publication) -> bool:
        floors = self._floors
        assert floors is not None
        floor = floors.get(publication.channel)
        if floor is None or publication.offset is None:
            return False
        if publication.epoch == floor.epoch and publication.offset <= floor.offset:
            return True  # already delivered from the history
        del floors[publication.channel]
        if not floors:
            self._floors = None
        return False

    def _drop_floors(self) -> None:
        self._floors = None

    def holding(self, channel: str) -> bool:
        """Whether live publications of the channel are held (its missed ones are awaited)."""
        return self._recovering is not None and channel in self._recovering

    def release(
        self,
        channel: str,
        missed: list[Publication],
        after_offset: int | None,
        position_epoch: str | None = None,
    ) -> list[Publication]:
        """Deliver a channel's missed publications, then the held live ones not among them;
        returns what was delivered. With the stream's epoch, later live publications up to
        the newest delivered offset are dropped (see `_floors`)."""
        held: list[Publication] = []
        if self._recovering is not None:
            held = self._recovering.pop(channel, [])
            if not self._recovering:
                self._recovering = None
        last = after_offset
        delivered = list(missed)
        for publication in missed:
            self.stage(publication)
            last = publication.offset
        for publication in held:
            if publication.offset is None or last is None or publication.offset > last:
                self.stage(publication)
                delivered.append(publication)
                last = publication.offset if publication.offset is not None else last
        if last is not None and position_epoch is not None:
            if self._floors is None:
                self._floors = {}
                # a late publication comes within milliseconds; forget the floors after a
                # while so an idle connection keeps none
                asyncio.get_running_loop().call_later(FLOOR_SECONDS, self._drop_floors)
            self._floors[channel] = StreamPosition(position_epoch, last)
        self.flush()
        return delivered

    # -- closing -----------------------------------------------------------------------------

    def close(self, code: CloseCode, reason: str, *, flush: bool = True) -> None:
        """Close the connection; with `flush`, after the staged and queued messages are
        written."""
        if self.closed or self._closing:
            if not flush and not self.closed:
                self._finish_close(code, reason)
            return
        self.close_code, self.close_reason = code, reason
        if flush:
            self.flush()
            if self.closed:
                return
            if self._queue:
                self._closing = True
                return
        self._finish_close()

    def _finish_close(self, code: CloseCode | None = None, reason: str | None = None) -> None:
        if code is not None:
            self.close_code = code
        if reason is not None:
            self.close_reason = reason
        self.closed = True
        self._discard_outbound()
        self.writer.close(self.close_code or CloseCode.NORMAL, self.close_reason)

    def __repr__(self) -> str:
        return f"Session(push_ref={self.push_ref!r}, user={self.user_id!r})"
