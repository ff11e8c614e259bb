"""The CRDT endpoint: Yjs sync and awareness over WebSocket at `{rest}/crdt/<docId>` (what a
y-websocket provider builds from `ws://HOST/rest/crdt` and the room name) and
`{rest}/crdt?docId=<docId>` (n8n's experimental CRDT path).

The upgrade is checked like the push endpoint's (origin, token from header, `token` query
parameter or cookie) and refused with the same HTTP errors; the document `<id>` is the workflow
`<id>`: reading it needs the policy's `can_subscribe`, writing it `can_write`. A read-only
connection gets the document and every update, may send awareness, and has its edits refused
(an auth "permission denied" message `read_only`, once). Inbound messages are checked in full
(size, then y-protocols and Yjs decoding); a bad one closes only its connection (1009, 1003).
Each connection has a bounded outbound queue written by a task of its own; a client that does
not read is closed with 4008, and reconnects and resyncs. Updates are paced, never dropped:
past `crdt_rate_limit` the connection's reading waits.

The WebSocket is aiohttp's (the push endpoint's own RFC 6455 protocol is built around
sessions and text frames; CRDT connections are few per document and long-lived).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, hdrs, web

from livepush.auth.tokens import Identity
from livepush.collab.crdt.metrics import CrdtMetrics
from livepush.collab.crdt.room import Room, Rooms
from livepush.collab.crdt.store import DocumentStore, DocumentTooLarge, StoreSettings
from livepush.collab.crdt.store_redis import RedisDocumentStore
from livepush.collab.crdt.store_sqlite import SqliteDocumentStore
from livepush.config import Config
from livepush.core.node import Node
from livepush.engines.base import EngineUnavailable
from livepush.http.errors import json_error
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
from livepush.protocol.errors import CloseCode, ErrorCode, ProtocolError
from livepush.transports.handshake import (
    HandshakeSettings,
    authenticate,
    check_request_origin,
    error_response,
    query_params,
)
from livepush.transports.websocket import HandshakeError, check_upgrade

log = logging.getLogger(__name__)

#: WebSocket close code for unsupported data (RFC 6455): malformed binary messages.
UNSUPPORTED_DATA = 1003


@dataclass(frozen=True, slots=True)
class CrdtSettings:
    """The endpoint's settings (a subset of `Config`)."""

    max_update_bytes: int = 1024 * 1024
    rate_limit: float = 200.0
    #: A connection's outbound queue bound (beyond a whole document).
    max_queue_bytes: int = 4 * 1024 * 1024
    ping_interval: float = 25.0
    jwt_leeway: float = 10.0
    #: Speak n8n's CRDT framing on `{rest}/crdt?docId=` (y-protocols otherwise).
    n8n_framing: bool = False


class _Pace:
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


class CrdtConnection:
    """One client of one document: its socket, its outbound queue and what it may do."""

    __slots__ = (
        "_expiry",
        "_queue",
        "_queued",
        "_wakeup",
        "_writer",
        "can_write",
        "closing",
        "denied",
        "dialect",
        "limit",
        "pace",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        identity: Identity,
        dialect: Dialect,
        *,
        can_write: bool,
        limit: int,
        rate: float,
    ) -> None:
        self.ws = ws
        self.user_id = identity.user_id
        self.dialect = dialect
        self.can_write = can_write
        self.limit = limit
        self.pace = _Pace(rate)
        #: Refusal reasons already told to the client (each is told once).
        self.denied: set[str] = set()
        self.closing = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def send(self, frame: bytes) -> None:
        """Queue a frame (see `Peer.send`); over the queue's bound the client is closed."""
        if self.closing:
            return
        self._queue.append(frame)
        self._queued += len(frame)
        if self._queued > self.limit:
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: outbound queue full; reconnect")
            return
        self._wakeup.set()

    def start(self, expires_at: float | None) -> None:
        """The socket is open: write what was queued meanwhile; close when the token ends."""
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write())
        if expires_at is not None:
            delay = max(0.0, expires_at - time.time())
            self._expiry = loop.call_later(
                delay, self.close, CloseCode.TOKEN_EXPIRED, "token expired"
            )

    async def _write(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue and not self.ws.closed:
                    frame = self._queue.popleft()
                    self._queued -= len(frame)
                    await self.ws.send_bytes(frame)
        except (ConnectionError, RuntimeError) as exc:  # the socket went away meanwhile
            log.debug("CRDT connection of %s: write failed: %s", self.user_id, exc)

    def close(self, code: int, reason: str) -> None:
        """Close the connection (from outside its handler)."""
        if self.closing:
            return
        self.closing = True
        self._queue.clear()
        self._queued = 0
        _spawn(self.ws.close(code=int(code), message=reason.encode()[:123]))

    async def close_now(self, code: int, reason: str) -> None:
        """Close the connection from its handler."""
        self.closing = True
        await self.ws.close(code=int(code), message=reason.encode()[:123])

    def stop(self) -> None:
        """The connection ended: stop its writer and timer."""
        self.closing = True
        if self._expiry is not None:
            self._expiry.cancel()
        if self._writer is not None:
            self._writer.cancel()


class CrdtService:
    """The endpoint's state: rooms, open connections, settings."""

    def __init__(
        self,
        node: Node,
        rooms: Rooms,
        metrics: CrdtMetrics,
        handshake: HandshakeSettings,
        settings: CrdtSettings,
    ) -> None:
        self.node = node
        self.rooms = rooms
        self.metrics = metrics
        self.handshake = handshake
        self.settings = settings
        self.connections: set[CrdtConnection] = set()
        #: Document connections per user on this node (`max_connections_per_user` apart from
        #: the push endpoint's).
        self._per_user: dict[str, int] = {}
        # what a connection may queue: a whole document (its first sync) and some traffic
        self._queue_limit = settings.max_queue_bytes + rooms.store.settings.max_doc_bytes

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`GET {rest}/crdt/<docId>` and `GET {rest}/crdt?docId=<docId>`."""
        query = query_params(request)
        doc_id = request.match_info.get("doc_id")
        dialect = Dialect.YJS
        if doc_id is None:
            doc_id = query.get("docId", "")
            if self.settings.n8n_framing:
                dialect = Dialect.N8N
        try:
            identity, can_write = await self._admit(request, query, doc_id)
            user = identity.user_id
            limit = self.node.settings.max_connections_per_user
            if self._per_user.get(user, 0) >= limit:
                raise ProtocolError(
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    f"user {user!r} already has {limit} document connections on this server",
                )
        except ProtocolError as exc:
            self.node.metrics.handshake_failures.labels(exc.code.value).inc()
            return _refusal(exc)
        self._per_user[user] = self._per_user.get(user, 0) + 1
        try:
            return await self._serve(request, identity, can_write, doc_id, dialect)
        finally:
            left = self._per_user[user] - 1
            if left:
                self._per_user[user] = left
            else:
                del self._per_user[user]

    async def _serve(
        self,
        request: web.Request,
        identity: Identity,
        can_write: bool,
        doc_id: str,
        dialect: Dialect,
    ) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            # larger messages are refused by `_receive` with a reason (aiohttp's own refusal,
            # past twice the limit, has none)
            max_msg_size=2 * self.settings.max_update_bytes + 64,
            heartbeat=self.settings.ping_interval,
        )
        connection = CrdtConnection(
            ws,
            identity,
            dialect,
            can_write=can_write,
            limit=self._queue_limit,
            rate=self.settings.rate_limit,
        )
        try:
            room = await self.rooms.join(doc_id, connection)
        except EngineUnavailable as exc:
            log.warning("could not open CRDT document %s: %s", doc_id, exc)
            return json_error(
                503, ErrorCode.ENGINE_UNAVAILABLE, "the document store is unavailable"
            )
        try:
            await ws.prepare(request)
        except BaseException:
            self.rooms.leave(room, connection)
            raise
        access = "write" if can_write else "read"
        self.connections.add(connection)
        self.metrics.connections.labels(access).inc()
        expires = identity.expires_at
        connection.start(None if expires is None else expires + self.settings.jwt_leeway)
        try:
            self._greet(connection, room)
            async for message in ws:
                if message.type is WSMsgType.BINARY:
                    await self._receive(connection, room, message.data)
                elif message.type is WSMsgType.TEXT:
                    self.metrics.refused(ErrorCode.INVALID_MESSAGE.value)
                    await connection.close_now(
                        UNSUPPORTED_DATA, "invalid_message: send binary y-protocols messages"
                    )
                if connection.closing:
                    break
        finally:
            self.connections.discard(connection)
            self.metrics.connections.labels(access).dec()
            connection.stop()
            self.rooms.leave(room, connection)
        return ws

    async def _admit(
        self, request: web.Request, query: dict[str, str], doc_id: str
    ) -> tuple[Identity, bool]:
        """The push endpoint's checks, then the document's authorization."""
        if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
            raise ProtocolError(ErrorCode.NOT_ACCEPTABLE, "open a WebSocket on this URL")
        check_upgrade(request)
        check_request_origin(request, self.handshake)
        try:
            parse_channel(f"workflow:{doc_id}")
        except ProtocolError as exc:
            raise ProtocolError(
                ErrorCode.INVALID_CHANNEL,
                "the document id (a workflow id) must be 1-128 characters of A-Z a-z 0-9 _ . @ "
                "= + -",
            ) from exc
        identity = authenticate(request, self.node, self.handshake, query)
        if self.node.draining:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server is shutting down; reconnect")
        policy = self.node.policy
        if not await policy.can_subscribe(identity, "workflow", doc_id):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to open document {doc_id!r}")
        return identity, await policy.can_write(identity, "workflow", doc_id)

    def _greet(self, connection: CrdtConnection, room: Room) -> None:
        """y-protocols: our sync step 1 (the client answers with what we miss); n8n: the whole
        document. Then the awareness states known."""
        if connection.dialect is Dialect.YJS:
            connection.send(sync_step1(room.state_vector()))
        else:
            connection.send(connection.dialect.update(room.full_state()))
        frame = room.awareness_frame(connection.dialect)
        if frame is not None:
            connection.send(frame)

    async def _receive(self, connection: CrdtConnection, room: Room, data: bytes) -> None:
        limit = self.settings.max_update_bytes
        if len(data) > limit:
            self.metrics.refused(ErrorCode.MESSAGE_TOO_LARGE.value)
            await connection.close_now(
                CloseCode.MESSAGE_TOO_BIG,
                f"message_too_large: {len(data)} bytes, over crdt_max_update_bytes ({limit})",
            )
            return
        try:
            message = connection.dialect.parse(data)
            if message.kind == MESSAGE_AWARENESS:
                if connection.pace.try_take():
                    room.receive_awareness(decode_awareness(message.payload), connection)
            elif message.kind == MESSAGE_QUERY_AWARENESS:
                frame = room.awareness_frame(connection.dialect)
                if frame is not None:
                    connection.send(frame)
            elif message.step == SYNC_STEP1:
                try:
                    connection.send(sync_step2(room.missing(message.payload)))
                except ValueError as exc:
                    raise MalformedMessage(f"not a Yjs state vector: {exc}") from exc
            else:
                await self._write(connection, room, message.payload, message.step)
        except MalformedMessage as exc:
            self.metrics.refused(ErrorCode.INVALID_MESSAGE.value)
            await connection.close_now(UNSUPPORTED_DATA, f"invalid_message: {exc.message}")

    async def _write(
        self, connection: CrdtConnection, room: Room, update: bytes, step: int
    ) -> None:
        """A sync step 2 or an update from the client."""
        if not connection.can_write:
            # A step 2 that only answers our step 1 with nothing new is not an edit.
            if step == SYNC_UPDATE or adds_structs(room.novel(update)):
                self._deny(connection, ErrorCode.READ_ONLY)
            return
        delay = connection.pace.wait()
        if delay:
            await asyncio.sleep(delay)
        # Stored, applied and passed on even if the client hangs up meanwhile: once stored,
        # the others must get it.
        work = asyncio.get_running_loop().create_task(room.submit(update, connection))
        work.add_done_callback(_retrieve)
        try:
            await asyncio.shield(work)
        except DocumentTooLarge as exc:
            log.info("CRDT document %s: update refused: %s", room.doc_id, exc)
            self._deny(connection, ErrorCode.DOCUMENT_TOO_LARGE)
        except EngineUnavailable as exc:
            log.warning("CRDT document %s: storing an update failed: %s", room.doc_id, exc)
            self.metrics.refused(ErrorCode.ENGINE_UNAVAILABLE.value)
            # the client still has the update: it sends it again after reconnecting
            await connection.close_now(CloseCode.TRY_AGAIN_LATER, "engine_unavailable; reconnect")

    def _deny(self, connection: CrdtConnection, code: ErrorCode) -> None:
        """Refuse an edit: counted each time, told once per connection and reason (n8n's
        framing has no message for it)."""
        self.metrics.refused(code.value)
        if code.value in connection.denied:
            return
        connection.denied.add(code.value)
        if connection.dialect is Dialect.YJS:
            connection.send(permission_denied(code.value))

    async def shutdown(self, app: web.Application) -> None:
        """Ask every client to reconnect (to another node)."""
        connections = list(self.connections)
        for connection in connections:
            connection.closing = True
        if connections:
            await asyncio.gather(
                *[
                    c.ws.close(
                        code=int(CloseCode.SERVICE_RESTART),
                        message=b"server restarting; reconnect",
                    )
                    for c in connections
                ],
                return_exceptions=True,
            )


def build_store(config: Config) -> DocumentStore:
    """The configured engine's document store."""
    settings = StoreSettings(
        max_doc_bytes=config.crdt_max_doc_bytes, compact_updates=config.crdt_compact_updates
    )
    if config.engine == "redis":
        return RedisDocumentStore(
            config.redis_url, settings, prefix=config.redis_prefix, cluster=config.redis_cluster
        )
    return SqliteDocumentStore(config.crdt_path, settings)


CRDT_KEY = web.AppKey("livepush.crdt", CrdtService)


def add_crdt_routes(
    app: web.Application, node: Node, config: Config, handshake: HandshakeSettings
) -> CrdtService:
    """Serve CRDT documents under `{rest}/crdt` with the configured engine's store."""
    metrics = CrdtMetrics(node.metrics.registry)
    rooms = Rooms(
        build_store(config),
        metrics,
        unload_delay=config.crdt_unload_delay,
        awareness_tick=config.crdt_awareness_tick,
    )
    service = CrdtService(
        node,
        rooms,
        metrics,
        handshake,
        CrdtSettings(
            max_update_bytes=config.crdt_max_update_bytes,
            rate_limit=config.crdt_rate_limit,
            max_queue_bytes=config.max_queue_bytes,
            ping_interval=config.ping_interval,
            jwt_leeway=config.jwt_leeway,
            n8n_framing=config.crdt_n8n_framing,
        ),
    )
    app[CRDT_KEY] = service
    prefix = config.rest_prefix
    app.router.add_get(f"{prefix}/crdt/{{doc_id}}", service.handle)
    app.router.add_get(f"{prefix}/crdt", service.handle)
    app.on_shutdown.append(service.shutdown)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await rooms.start()
        yield
        await rooms.close()

    app.cleanup_ctx.append(lifecycle)
    return service


def _refusal(exc: ProtocolError) -> web.Response:
    if exc.code is ErrorCode.AUTHORIZATION_UNAVAILABLE:
        return json_error(503, exc.code, exc.message)
    response = error_response(exc)
    if isinstance(exc, HandshakeError) and exc.version:
        response.headers[hdrs.SEC_WEBSOCKET_VERSION] = "13"
    return response


_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A shielded store step whose handler was cancelled: its failure is logged, not lost."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, DocumentTooLarge | EngineUnavailable):
        log.error("storing a CRDT update failed", exc_info=exc)
