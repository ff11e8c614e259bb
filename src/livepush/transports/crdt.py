"""The CRDT endpoint's sockets: Yjs sync and awareness over WebSocket at `{rest}/crdt/<docId>`
(what a y-websocket provider builds from `ws://HOST/rest/crdt` and the room name) and
`{rest}/crdt?docId=<docId>` (n8n's experimental CRDT path).

The upgrade is checked like the push endpoint's (origin, token from header, `token` query
parameter or cookie) and refused with the same HTTP errors; what a connection may do and what
each message does is the documents' business (`collab/crdt/documents.py`). Here: the size
limit of a message (1009), text frames refused (1003), malformed messages (1003), a store that
is down (1013), token expiry (4001) and shutdown (1012). Each connection has a bounded outbound
queue written by a task of its own; a client that does not read is closed with 4008, and
reconnects and resyncs.

The WebSocket is aiohttp's (the push endpoint's own RFC 6455 protocol is built around
sessions and text frames; CRDT connections are few per document and long-lived).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from aiohttp import WSMsgType, hdrs, web

from livepush.auth.tokens import Identity
from livepush.collab.crdt.documents import Documents, Pace
from livepush.collab.crdt.room import Room
from livepush.engines.base import EngineUnavailable
from livepush.protocol.crdt import Dialect, MalformedMessage
from livepush.protocol.errors import CloseCode, ErrorCode, ProtocolError
from livepush.requests import HandshakeSettings, authenticate, check_request_origin, query_params
from livepush.responses import json_error
from livepush.transports.admission import Admission
from livepush.transports.websocket import check_upgrade, refusal

log = logging.getLogger(__name__)

#: WebSocket close code for unsupported data (RFC 6455): malformed binary messages.
UNSUPPORTED_DATA = 1003


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
        self.pace = Pace(rate)
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


class CrdtEndpoint:
    """`GET {rest}/crdt/<docId>` and `GET {rest}/crdt?docId=<docId>` of one node."""

    def __init__(
        self,
        documents: Documents,
        handshake: HandshakeSettings,
        admission: Admission | None = None,
    ) -> None:
        self.documents = documents
        #: The node's connection cap and handshake rate, shared with the push endpoint.
        self.admission = admission
        self.node = documents.node
        self.metrics = documents.metrics
        self.handshake = handshake
        self.settings = documents.settings
        self.connections: set[CrdtConnection] = set()
        #: Document connections per user on this node (`max_connections_per_user` apart from
        #: the push endpoint's).
        self._per_user: dict[str, int] = {}
        # what a connection may queue: a whole document (its first sync) and some traffic
        store = documents.rooms.store
        self._queue_limit = self.settings.max_queue_bytes + store.settings.max_doc_bytes

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Check the upgrade, then serve the connection until it ends."""
        query = query_params(request)
        doc_id = request.match_info.get("doc_id")
        dialect = Dialect.YJS
        if doc_id is None:
            doc_id = query.get("docId", "")
            if self.settings.n8n_framing:
                dialect = Dialect.N8N
        try:
            if self.admission is not None:
                self.admission.check(request)
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

    async def _admit(
        self, request: web.Request, query: dict[str, str], doc_id: str
    ) -> tuple[Identity, bool]:
        """The push endpoint's checks, then the document's authorization."""
        if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
            raise ProtocolError(ErrorCode.NOT_ACCEPTABLE, "open a WebSocket on this URL")
        check_upgrade(request)
        check_request_origin(request, self.handshake)
        self.documents.check_id(doc_id)
        identity = authenticate(request, self.node.verifier, self.handshake, query)
        if self.node.draining:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server is shutting down; reconnect")
        return identity, await self.documents.access(identity, doc_id)

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
        rooms = self.documents.rooms
        try:
            room = await rooms.join(doc_id, connection)
        except EngineUnavailable as exc:
            log.warning("could not open CRDT document %s: %s", doc_id, exc)
            return json_error(
                503, ErrorCode.ENGINE_UNAVAILABLE, "the document store is unavailable"
            )
        try:
            await ws.prepare(request)
        except BaseException:
            rooms.leave(room, connection)
            raise
        access = "write" if can_write else "read"
        self.connections.add(connection)
        self.metrics.connections.labels(access).inc()
        expires = identity.expires_at
        connection.start(None if expires is None else expires + self.settings.jwt_leeway)
        try:
            self.documents.greet(connection, room)
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
            rooms.leave(room, connection)
        return ws

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
            await self.documents.receive(connection, room, data)
        except MalformedMessage as exc:
            self.metrics.refused(ErrorCode.INVALID_MESSAGE.value)
            await connection.close_now(UNSUPPORTED_DATA, f"invalid_message: {exc.message}")
        except EngineUnavailable as exc:
            log.warning("CRDT document %s: storing an update failed: %s", room.doc_id, exc)
            self.metrics.refused(ErrorCode.ENGINE_UNAVAILABLE.value)
            # the client still has the update: it sends it again after reconnecting
            await connection.close_now(CloseCode.TRY_AGAIN_LATER, "engine_unavailable; reconnect")

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


CRDT_ENDPOINT = web.AppKey("livepush.crdt", CrdtEndpoint)


def add_crdt_routes(app: web.Application, endpoint: CrdtEndpoint, rest_prefix: str) -> None:
    """Serve CRDT documents under `{rest}/crdt`; their connections are closed at shutdown."""
    app[CRDT_ENDPOINT] = endpoint
    app.router.add_get(f"{rest_prefix}/crdt/{{doc_id}}", endpoint.handle)
    app.router.add_get(f"{rest_prefix}/crdt", endpoint.handle)
    app.on_shutdown.append(endpoint.shutdown)


def _refusal(exc: ProtocolError) -> web.Response:
    if exc.code is ErrorCode.AUTHORIZATION_UNAVAILABLE:
        return json_error(503, exc.code, exc.message)
    return refusal(exc)


_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
