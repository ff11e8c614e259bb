"""CRDT documents as a node serves them: who may open which document, and what each message
of a client does. The socket (`transports/crdt.py`) hands over each binary message; this
module decides, the rooms (`room.py`) hold the open documents.

The document `<id>` is the workflow `<id>`: reading it needs the policy's `can_subscribe`,
writing it `can_write`. A read-only connection gets the document and every update, may send
awareness, and has its edits refused (an auth "permission denied" message `read_only`, once
per connection and reason). Inbound messages are checked in full (y-protocols and Yjs
decoding); a malformed one raises `MalformedMessage`, for the transport to close that
connection alone. Updates are paced, never dropped: past `rate_limit` the connection's reading
waits; awareness past it is dropped (the next state replaces it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from livepush.auth.tokens import Identity
from livepush.collab.crdt.metrics import CrdtMetrics
from livepush.collab.crdt.room import Peer, Room, Rooms
from livepush.core.extensions import Feature
from livepush.core.node import Node
from livepush.engines.base import EngineUnavailable
from livepush.engines.documents import DocumentTooLarge
from livepush.protocol.channels import parse_channel
from livepush.protocol.crdt import (
    MESSAGE_AWARENESS,
    MESSAGE_QUERY_AWARENESS,
    SYNC_STEP1,
    SYNC_UPDATE,
    Dialect,
    MalformedMessage,
    adds_structs,
    decode_awareness,
    permission_denied,
    sync_step1,
    sync_step2,
)
from livepush.protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CrdtSettings:
    """The settings of CRDT documents and their endpoint (a subset of `Config`)."""

    max_update_bytes: int = 1024 * 1024
    rate_limit: float = 200.0
    #: A connection's outbound queue bound (beyond a whole document).
    max_queue_bytes: int = 4 * 1024 * 1024
    ping_interval: float = 25.0
    jwt_leeway: float = 10.0
    #: Speak n8n's CRDT framing on `{rest}/crdt?docId=` (y-protocols otherwise).
    n8n_framing: bool = False


class Pace:
    """Token bucket of one connection: updates wait for their token, awareness without one
    is dropped (the next state replaces it)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = 2 * rate
        self._tokens = self.burst
        self._last = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def wait(self) -> float:
        """Spend a token; seconds to wait before going on."""
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_take(self) -> bool:
        """Spend a token if there is one."""
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class DocumentPeer(Peer, Protocol):
    """What the documents need of a connection, beyond what a room needs."""

    #: Whether the connection may edit.
    can_write: bool
    pace: Pace
    #: Refusal reasons already told to the client (each is told once).
    denied: set[str]


class Documents(Feature):
    """The CRDT documents of a node (a feature for its lifecycle: the rooms start and stop
    with the node)."""

    name = "documents"

    def __init__(self, node: Node, rooms: Rooms, settings: CrdtSettings | None = None) -> None:
        super().__init__()
        self.node = node
        self.rooms = rooms
        self.metrics: CrdtMetrics = rooms.metrics
        self.settings = settings or CrdtSettings()

    async def start(self) -> None:
        """Start the store and the awareness sweeper."""
        await self.rooms.start()

    async def close(self) -> None:
        """Unload every room and close the store (connections are closed before)."""
        await self.rooms.close()

    # -- opening -----------------------------------------------------------------------------

    @staticmethod
    def check_id(doc_id: str) -> None:
        """Raise `invalid_channel` unless `doc_id` can be a workflow id."""
        try:
            parse_channel(f"workflow:{doc_id}")
        except ProtocolError as exc:
            raise ProtocolError(
                ErrorCode.INVALID_CHANNEL,
                "the document id (a workflow id) must be 1-128 characters of A-Z a-z 0-9 _ . @ "
                "= + -",
            ) from exc

    async def access(self, identity: Identity, doc_id: str) -> bool:
        """Whether the user may write the document (True) or only read it (False); raises
        `forbidden` when they may not open it."""
        policy = self.node.policy
        if not await policy.can_subscribe(identity, "workflow", doc_id):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to open document {doc_id!r}")
        return await policy.can_write(identity, "workflow", doc_id)

    def greet(self, peer: DocumentPeer, room: Room) -> None:
        """y-protocols: our sync step 1 (the client answers with what we miss); n8n: the whole
        document. Then the awareness states known."""
        if peer.dialect is Dialect.YJS:
            peer.send(sync_step1(room.state_vector()))
        else:
            peer.send(peer.dialect.update(room.full_state()))
        frame = room.awareness_frame(peer.dialect)
        if frame is not None:
            peer.send(frame)

    # -- messages ----------------------------------------------------------------------------

    async def receive(self, peer: DocumentPeer, room: Room, data: bytes) -> None:
        """One binary message of a client. Raises `MalformedMessage` (close the connection:
        1003) and `EngineUnavailable` (the update was not stored: close, the client sends it
        again after reconnecting)."""
        message = peer.dialect.parse(data)
        if message.kind == MESSAGE_AWARENESS:
            if peer.pace.try_take():
                room.receive_awareness(decode_awareness(message.payload), peer)
        elif message.kind == MESSAGE_QUERY_AWARENESS:
            frame = room.awareness_frame(peer.dialect)
            if frame is not None:
                peer.send(frame)
        elif message.step == SYNC_STEP1:
            try:
                peer.send(sync_step2(room.missing(message.payload)))
            except ValueError as exc:
                raise MalformedMessage(f"not a Yjs state vector: {exc}") from exc
        else:
            await self._write(peer, room, message.payload, message.step)

    async def _write(self, peer: DocumentPeer, room: Room, update: bytes, step: int) -> None:
        """A sync step 2 or an update from the client."""
        if not peer.can_write:
            # A step 2 that only answers our step 1 with nothing new is not an edit.
            if step == SYNC_UPDATE or adds_structs(room.novel(update)):
                self.deny(peer, ErrorCode.READ_ONLY)
            return
        delay = peer.pace.wait()
        if delay:
            await asyncio.sleep(delay)
        # Stored, applied and passed on even if the client hangs up meanwhile: once stored,
        # the others must get it.
        work = asyncio.get_running_loop().create_task(room.submit(update, peer))
        work.add_done_callback(_retrieve)
        try:
            await asyncio.shield(work)
        except DocumentTooLarge as exc:
            log.info("CRDT document %s: update refused: %s", room.doc_id, exc)
            self.deny(peer, ErrorCode.DOCUMENT_TOO_LARGE)

    def deny(self, peer: DocumentPeer, code: ErrorCode) -> None:
        """Refuse an edit: counted each time, told once per connection and reason (n8n's
        framing has no message for it)."""
        self.metrics.refused(code.value)
        if code.value in peer.denied:
            return
        peer.denied.add(code.value)
        if peer.dialect is Dialect.YJS:
            peer.send(permission_denied(code.value))


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A shielded store step whose handler was cancelled: its failure is logged, not lost."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, DocumentTooLarge | EngineUnavailable):
        log.error("storing a CRDT update failed", exc_info=exc)
