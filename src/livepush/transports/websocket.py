"""The WebSocket transport: RFC 6455 on a plain asyncio protocol.

aiohttp parses the upgrade request and runs the handshake checks; then the socket is handed
over to a `WebSocketConnection` (one small object that is both the asyncio protocol and the
session's `FrameWriter`), the 101 response is written, and aiohttp's request handler, parser,
request object and task are released. An idle connection costs its transport, this object
and its session, nothing else: no task, no coroutine frame, no reader queue, no timer.

- Outbound: publications are pre-built frames. A server frame is unmasked, so the bytes of
  one frame are identical for every recipient and are built once per publication
  (`Publication.ws_frame`), then handed to each connection's transport as they are.
- Inbound: frames are parsed in `data_received` (masking required, no extensions, control
  frames at most 125 bytes and unfragmented, fragmented messages reassembled under
  `max_message_bytes`, text checked to be UTF-8). Messages go to an inbox handled by a task
  that exists only while there is something to handle, in order; a client that sends faster
  than its commands are handled has its socket's reading paused.
- Bounds on what a peer can make the server hold or write: every fragment costs
  `FRAGMENT_COST` bytes of the message limit on top of its payload (what holding it costs),
  so a message that never ends is cut at the limit, not after millions of empty fragments;
  pings and pongs spend the connection's message rate (a flood is cut with 4029); and a pong
  is written only while the peer reads: while the socket is over its high-water mark only
  the newest ping is answered, once it drains (RFC 6455 section 5.5.3 allows answering only
  the most recent ping), so a peer that pings and never reads holds one pong, not gigabytes.
- Closing: a server-initiated close sends the close frame after everything written so far and
  waits (at most `CLOSE_TIMEOUT`) for the client's close frame, then closes the socket; a
  client's close frame is echoed. Protocol violations close with 1002, invalid UTF-8 with
  1007, an oversized message with 1009.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import struct
from collections import deque
from collections.abc import Mapping
from typing import cast

from aiohttp import hdrs, web

from livepush.core.node import Node
from livepush.core.ratelimit import RateDecision
from livepush.core.session import GONE, PAUSED, SENT, Session
from livepush.protocol.envelope import Publication, StreamPosition, error_message
from livepush.protocol.errors import CloseCode, ErrorCode, ProtocolError
from livepush.responses import error_response

log = logging.getLogger(__name__)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_FIN_TEXT = 0x80 | _OP_TEXT
_PING_FRAME = b"\x89\x00"  # FIN + ping, empty payload

#: How long a server-initiated close waits for the client's close frame; also how long a
#: client that stopped reading gets to take its close frame before the socket is reset.
CLOSE_TIMEOUT = 5.0
#: Reading from a client pauses while this many of its messages wait to be handled, and
#: resumes when they are down to `_INBOX_RESUME`.
_INBOX_PAUSE = 64
_INBOX_RESUME = 16

_OPEN, _CLOSING, _CLOSED = 0, 1, 2

#: Close codes a client may send (RFC 6455 section 7.4); 1005, 1006 and 1015 never go on the
#: wire.
_VALID_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015))) | frozenset(
    range(3000, 5000)
)

#: What holding one fragment of a message costs, counted against `max_message_bytes` on top
#: of its payload (the list slot, the bytes object, the frame's handling).
FRAGMENT_COST = 64

#: Tasks finishing closed connections (kept referenced until done).
_finishing: set[asyncio.Task[None]] = set()


def close_frame(code: int, reason: str) -> bytes:
    """An unmasked close frame."""
    payload = struct.pack("!H", code) + reason.encode()[:120]
    return bytes((0x88, len(payload))) + payload


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server-to-client text frame."""
    length = len(payload)
    if length < 126:
        return bytes((_FIN_TEXT, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", _FIN_TEXT, 126, length) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, length) + payload


def _frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload  # control frames: <= 125 bytes


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR the payload with the 4-byte mask (one big-integer operation, not a loop)."""
    length = len(payload)
    if not length:
        return b""
    key = (bytes(mask) * (length // 4 + 1))[:length]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(length, "big")


def accept_key(key: str) -> str:
    """`Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`."""
    digest = hashlib.sha1(key.encode() + _GUID).digest()  # RFC 6455 mandates SHA-1 here
    return base64.b64encode(digest).decode()


class HandshakeError(ProtocolError):
    """A malformed WebSocket upgrade request."""

    def __init__(self, message: str, *, version: bool = False) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)
        self.version = version


def check_upgrade(request: web.Request) -> str:
    """Validate the upgrade request (RFC 6455 section 4.2.1); returns the client's key."""
    if request.method != "GET":
        raise HandshakeError("a WebSocket upgrade must be a GET")
    if "upgrade" not in request.headers.get(hdrs.CONNECTION, "").lower():
        raise HandshakeError("a WebSocket upgrade needs `Connection: Upgrade`")
    if request.headers.get(hdrs.SEC_WEBSOCKET_VERSION, "").strip() != "13":
        raise HandshakeError("unsupported WebSocket version; use 13", version=True)
    key = request.headers.get(hdrs.SEC_WEBSOCKET_KEY, "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise HandshakeError("Sec-WebSocket-Key must be 16 random bytes in base64")
    return key


def refusal(exc: ProtocolError) -> web.Response:
    """The HTTP error refusing an upgrade (a wrong WebSocket version says which one to use)."""
    response = error_response(exc)
    if isinstance(exc, HandshakeError) and exc.version:
        response.headers[hdrs.SEC_WEBSOCKET_VERSION] = "13"
    return response


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket connection: the socket's protocol and the session's `FrameWriter`."""

    __slots__ = (
        "_buffer",
        "_close_timer",
        "_drain_waiter",
        "_fragment_opcode",
        "_fragment_size",
        "_fragments",
        "_inbox",
        "_max_message",
        "_node",
        "_paused",
        "_peer_close_code",
        "_pending_pong",
        "_reading_paused",
        "_socket",
        "_state",
        "_worker",
        "awaiting_pong",
        "session",
    )
    transport = "websocket"
    tracks_positions = False

    def __init__(self, node: Node, max_message_bytes: int) -> None:
        self._node = node
        self._max_message = max_message_bytes
        self._socket: asyncio.Transport | None = None
        self.session: Session | None = None
        self._state = _OPEN
        self._buffer: bytearray | None = None
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._inbox: deque[str | bytes] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._peer_close_code: int | None = None
        #: The payload of the newest ping not answered yet (the peer is not reading).
        self._pending_pong: bytes | None = None
        #: A ping was sent and nothing has come back from the peer since.
        self.awaiting_pong = False

    # -- FrameWriter: outbound ---------------------------------------------------------------

    def encode(self, publication: Publication) -> bytes:
        """The publication's frame, built by the first recipient and shared by all."""
        frame = publication.ws_frame
        if frame is None:
            frame = publication.ws_frame = text_frame(publication.payload)
        return frame

    def send(self, publications: Publication | list[Publication]) -> int:
        """Write the publications' shared frames in one write (see `FrameWriter.send`)."""
        if self._paused:
            return PAUSED
        socket = self._socket
        if socket is None or self._state or socket.is_closing():
            return GONE
        if isinstance(publications, list):
            frame = b"".join([self.encode(publication) for publication in publications])
        else:
            frame = publications.ws_frame or self.encode(publications)
        socket.write(frame)
        return SENT

    def encode_control(self, payload: bytes) -> bytes:
        """A control message frame."""
        return text_frame(payload)

    def encode_mark(self, positions: Mapping[str, StreamPosition | None]) -> bytes:
        """WebSocket clients read positions from the frames themselves."""
        return b""

    @property
    def paused(self) -> bool:
        """True while the socket's buffer is over its high-water mark."""
        return self._paused

    def write(self, data: bytes) -> bool:
        """Write bytes, unless the connection is closing."""
        socket = self._socket
        if socket is None or self._state or socket.is_closing():
            return False
        socket.write(data)
        return True

    def ping(self) -> bool:
        """Send a ping frame; False if the previous one is still unanswered."""
        if self.awaiting_pong:
            return False
        self.awaiting_pong = True
        self.write(_PING_FRAME)
        return True

    async def drain(self) -> None:
        """Wait for the socket buffer to go under its low-water mark."""
        if self._socket is None or self._socket.is_closing():
            raise ConnectionResetError("connection lost")
        if not self._paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)

    def close(self, code: CloseCode, reason: str) -> None:
        """Start the closing handshake after everything written so far (a peer that stopped
        answering pings is dropped at once; a slow consumer does not get to answer)."""
        socket = self._socket
        if socket is None or self._state:
            return
        if code is CloseCode.ABNORMAL_CLOSURE:
            self.abort()
        elif code is CloseCode.SLOW_CONSUMER:
            self.shut(code, reason)
        else:
            self._state = _CLOSING
            socket.write(close_frame(int(code), reason))
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, socket.abort)

    def shut(self, code: CloseCode, reason: str) -> None:
        """Close without waiting for the client's close frame (it has stopped reading): the
        close frame goes after what is buffered, then the socket closes, or is reset if the
        client still has not taken it after a grace period."""
        socket = self._socket
        if socket is None or socket.is_closing():
            return
        self._state = _CLOSED
        socket.write(close_frame(int(code), reason))
        socket.close()
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, socket.abort)

    # -- asyncio protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._socket = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        pong, self._pending_pong = self._pending_pong, None
        if pong is not None and self._state == _OPEN:
            self.write(_frame(_OP_PONG, pong))
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._state = _CLOSED
        self._paused = False
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))
            waiter.exception()  # retrieved: nobody may be waiting
        self._inbox = None
        self._buffer = None
        self._fragments = None
        if self._worker is None:
            self._finish()
        # else: the worker finishes the command in hand, then calls `_finish`.

    def data_received(self, data: bytes) -> None:
        if self._state == _CLOSED:
            return
        buffer = self._buffer
        if buffer is None:
            view: bytes | bytearray = data
        else:
            buffer += data
            view = buffer
        end = len(view)
        pos = 0
        while end - pos >= 2:
            first, second = view[pos], view[pos + 1]
            opcode = first & 0x0F
            final = first & 0x80
            if first & 0x70:
                return self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                return self._fail(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            length = second & 0x7F
            header = 6
            if length == 126:
                if end - pos < 8:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 4], "big")
                header = 8
            elif length == 127:
                if end - pos < 14:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                header = 14
            if opcode & 0x8:
                if opcode > _OP_PONG:
                    return self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
                if not final or length > 125:
                    return self._fail(
                        CloseCode.PROTOCOL_ERROR, "control frames are unfragmented, <= 125 bytes"
                    )
            elif opcode > _OP_BINARY:
                return self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif length + self._fragment_size > self._max_message:
                return self._too_big()
            if end - pos < header + length:
                break
            start = pos + header
            pos = start + length
            if self._state != _OPEN and opcode != _OP_CLOSE:
                continue  # closing: only the client's close frame matters, nothing is unmasked
            payload = unmask(view[start:pos], view[start - 4 : start])
            self._on_frame(opcode, final, payload)
            if self._state == _CLOSED:
                return
        if pos == end:
            self._buffer = None
        elif buffer is None:
            self._buffer = bytearray(view[pos:])
        else:
            del buffer[:pos]

    # -- inbound -----------------------------------------------------------------------------

    def _on_frame(self, opcode: int, final: int, payload: bytes) -> None:
        self.awaiting_pong = False
        if opcode & 0x8:
            if opcode == _OP_CLOSE:
                self._on_close_frame(payload)
            elif self._state == _OPEN and self._control_allowed() and opcode == _OP_PING:
                if self._paused:  # not reading: answer the newest ping once it drains
                    self._pending_pong = payload
                else:
                    self.write(_frame(_OP_PONG, payload))
            return
        if self._state != _OPEN:
            return  # closing: only the client's close frame matters now
        fragments = self._fragments
        if opcode == _OP_CONTINUATION:
            if fragments is None:
                return self._fail(CloseCode.PROTOCOL_ERROR, "continuation of no message")
            self._fragment_size += len(payload) + FRAGMENT_COST
            if self._fragment_size > self._max_message:
                return self._too_big()
            if payload:
                fragments.append(payload)
            if not final:
                return
            opcode = self._fragment_opcode
            payload = b"".join(fragments)
            self._fragments = None
            self._fragment_size = 0
        elif fragments is not None:
            return self._fail(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        elif not final:
            self._fragments = [payload]
            self._fragment_opcode = opcode
            self._fragment_size = len(payload) + FRAGMENT_COST
            return
        if opcode == _OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                return self._fail(CloseCode.INVALID_PAYLOAD, "text frames must be UTF-8")
            self._deliver(text)
        else:
            self._deliver(payload)

    def _control_allowed(self) -> bool:
        """Spend the connection's message rate on a ping or pong: False when over it (a ping
        is then not answered); a flood far over it closes the connection with 4029."""
        session = self.session
        if session is None:
            return True  # still opening: a pong is all it can cost, and pongs are bounded
        decision = session.rate.take()
        if decision is RateDecision.ALLOW:
            return True
        metrics = self._node.metrics
        metrics.received("rate_limited", 0)
        if decision is RateDecision.ABUSIVE:
            metrics.errors.labels(ErrorCode.RATE_LIMITED.value).inc()
            session.close(CloseCode.RATE_LIMITED, "ping rate limit exceeded", flush=False)
        return False

    def _on_close_frame(self, payload: bytes) -> None:
        socket = self._socket
        assert socket is not None
        code: int | None = None
        if len(payload) == 1:
            return self._fail(CloseCode.PROTOCOL_ERROR, "close frame payload of one byte")
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if code not in _VALID_CLOSE_CODES:
                return self._fail(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                return self._fail(CloseCode.INVALID_PAYLOAD, "close reason must be UTF-8")
        self._peer_close_code = code
        if self._state == _OPEN:  # the client closes: echo its code
            socket.write(_frame(_OP_CLOSE, payload[:2]))
        self._state = _CLOSED
        socket.close()

    def _deliver(self, message: str | bytes) -> None:
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(message)
        if len(inbox) >= _INBOX_PAUSE and not self._reading_paused and self._socket is not None:
            self._reading_paused = True
            self._socket.pause_reading()
        if self._worker is None and self.session is not None:
            self._worker = asyncio.get_running_loop().create_task(self._work(self.session))

    async def _work(self, session: Session) -> None:
        """Handle the inbox in order; exits when it is empty."""
        node = self._node
        try:
            while (inbox := self._inbox) and not session.closed:
                message = inbox.popleft()
                if self._reading_paused and len(inbox) <= _INBOX_RESUME:
                    self._reading_paused = False
                    if self._socket is not None and self._state != _CLOSED:
                        self._socket.resume_reading()
                if isinstance(message, str):
                    await node.commands.handle(session, message)
                else:
                    session.send_control(
                        error_message(
                            ErrorCode.BINARY_NOT_SUPPORTED, "send JSON commands as text frames"
                        )
                    )
        except Exception:
            log.exception("error handling a message from %r", session)
            session.close(CloseCode.INTERNAL_ERROR, "internal error", flush=False)
        finally:
            self._worker = None
            self._inbox = None
            if self._state == _CLOSED and (socket := self._socket) and socket.is_closing():
                self._finish()

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Fail the connection on a protocol violation: send a close frame with `code`, then
        the end of the stream; whatever the client still sends is read and discarded (so the
        socket is not reset before the client has read the close frame) until it closes too
        or the close timer resets it."""
        self._buffer = None
        self._fragments = None
        if self.session is not None:
            self.session.close(code, reason, flush=False)
        else:
            self.close(code, reason)
        self._state = _CLOSED
        socket = self._socket
        if socket is not None and not socket.is_closing() and socket.can_write_eof():
            socket.write_eof()

    def abort(self) -> None:
        """Reset the connection now."""
        self._state = _CLOSED
        if self._socket is not None:
            self._socket.abort()

    def _too_big(self) -> None:
        self._node.metrics.errors.labels(ErrorCode.MESSAGE_TOO_LARGE.value).inc()
        self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, session: Session) -> None:
        """Attach the opened session; handle what arrived meanwhile."""
        self.session = session
        if self._state == _CLOSED and (self._socket is None or self._socket.is_closing()):
            self._finish()
        elif self._inbox and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(session))

    def _finish(self) -> None:
        """The socket is gone: unregister the session (once)."""
        session = self.session
        if session is None:
            return  # `start` finishes it once the session exists
        self.session = None
        if session.close_code is None and self._peer_close_code is not None:
            session.close_reason = f"client closed ({self._peer_close_code})"
        task = asyncio.get_running_loop().create_task(self._node.close_session(session))
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)


def hand_over(request: web.Request, connection: WebSocketConnection, key: str) -> None:
    """Write the 101 response and switch the socket from aiohttp's protocol to ours."""
    socket = cast(asyncio.Transport, request.transport)
    # Bytes after the request (a client may not send frames before the 101, but be lenient).
    tail: bytes = getattr(request.protocol, "_message_tail", b"") or b""
    socket.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )
    socket.set_protocol(connection)
    connection.connection_made(socket)
    if tail:
        connection.data_received(tail)


def release_request(request: web.Request) -> web.Response:
    """Detach aiohttp's request handler from the socket it no longer owns: to it, the
    connection is gone (it unregisters it and ends its task without touching the socket)."""
    protocol = request.protocol
    protocol.transport = None
    protocol.connection_lost(None)
    return web.Response(status=101)  # never written: aiohttp's side of the socket is gone


async def close_all(node: Node, grace: float = 1.0) -> None:
    """Shutting down: ask every client still connected to reconnect elsewhere (the node's
    drain), reset the WebSocket connections that have not closed within `grace` seconds, and
    wait until their sessions are unregistered. aiohttp's own shutdown does not see these
    sockets any more."""
    if not len(node.hub):
        return
    await node.drain(grace)
    for session in node.hub.sessions():
        if isinstance(session.writer, WebSocketConnection):
            session.writer.abort()
    await asyncio.sleep(0)  # connection_lost callbacks run
    while _finishing:
        await asyncio.gather(*list(_finishing), return_exceptions=True)
