"""The WebSocket transport (aiohttp).

Publications are written as pre-built frames: a server frame is unmasked, so the bytes of one
frame are identical for every recipient and are built once per publication (`ws_frame`), then
handed to each connection's transport with no per-recipient encoding. aiohttp still owns the
connection (handshake, reading, ping/pong, close); only data frames bypass its writer. This
is the one place that touches aiohttp internals (`_drain_helper`, `_reader`), covered by the
tests.

A server-initiated close is performed by the connection's own read loop: `close()` wakes it
with a marker message, and the loop runs aiohttp's close handshake (send the close frame, wait
for the client's). Closing from another task while the loop waits in `receive()` would make
aiohttp drop the socket without waiting for the client's close frame, so clients would see
1006 instead of our close code.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import WSMessage, WSMsgType, hdrs, web

from livepush.core.node import Node
from livepush.core.session import GONE, PAUSED, SENT
from livepush.http.errors import json_error
from livepush.protocol.envelope import Publication, StreamPosition, error_message
from livepush.protocol.errors import CloseCode, ErrorCode, ProtocolError
from livepush.transports.handshake import HandshakeSettings, accept, error_response
from livepush.transports.sse import serve_sse

log = logging.getLogger(__name__)

_OP_TEXT = 0x81  # FIN + text opcode
_PING_FRAME = b"\x89\x00"  # FIN + ping, empty payload


#: A client that stopped reading gets this long to take its close frame before the socket is
#: reset.
SLOW_CLOSE_GRACE = 5.0


def close_frame(code: int, reason: str) -> bytes:
    """An unmasked close frame."""
    payload = struct.pack("!H", code) + reason.encode()[:120]
    return bytes((0x88, len(payload))) + payload


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server-to-client text frame."""
    length = len(payload)
    if length < 126:
        return bytes((_OP_TEXT, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", _OP_TEXT, 126, length) + payload
    return struct.pack("!BBQ", _OP_TEXT, 127, length) + payload


class _CloseRequest:
    __slots__ = ("code", "reason")

    def __init__(self, code: CloseCode, reason: str) -> None:
        self.code = code
        self.reason = reason


class WebSocketFrameWriter:
    """`FrameWriter` over an aiohttp WebSocket connection."""

    __slots__ = ("_close_requested", "_protocol", "_transport", "_ws", "awaiting_pong")
    transport = "websocket"
    tracks_positions = False

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._ws = ws
        self._transport: Any = request.transport
        self._protocol: Any = request.protocol
        self._close_requested = False
        #: A ping was sent and nothing has come back from the peer since.
        self.awaiting_pong = False

    def encode(self, publication: Publication) -> bytes:
        """The publication's frame, built by the first recipient and shared by all."""
        frame = publication.ws_frame
        if frame is None:
            frame = publication.ws_frame = text_frame(publication.payload)
        return frame

    def send(self, publications: Publication | list[Publication]) -> int:
        """Write the publications' shared frames in one write (see `FrameWriter.send`)."""
        if self._protocol.writing_paused:
            return PAUSED
        transport = self._transport
        if transport.is_closing():
            return GONE
        if isinstance(publications, list):
            frame = b"".join([self.encode(publication) for publication in publications])
        else:
            frame = publications.ws_frame or self.encode(publications)
        transport.write(frame)
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
        return bool(self._protocol.writing_paused)

    def write(self, data: bytes) -> bool:
        """Write bytes, unless the connection is closing."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
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
        await self._protocol._drain_helper()

    def close(self, code: CloseCode, reason: str) -> None:
        """Ask the connection's read loop to close with this code and reason (a peer that
        stopped answering pings is dropped at once, without a close handshake)."""
        if code is CloseCode.ABNORMAL_CLOSURE:
            if self._transport is not None:
                self._transport.abort()
            return
        reader = self._ws._reader
        if self._ws.closed or self._close_requested or reader is None:
            return
        self._close_requested = True
        request = _CloseRequest(code, reason)
        reader.feed_data(WSMessage(WSMsgType.ERROR, request, None), 0)

    def shut(self, code: CloseCode, reason: str) -> None:
        """Close without waiting for the client's close frame (it has stopped reading): the
        close frame goes after what is buffered, then the socket closes, or is reset if the
        client still has not taken it after a grace period."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(close_frame(int(code), reason))
        transport.close()
        asyncio.get_running_loop().call_later(SLOW_CLOSE_GRACE, transport.abort)


def push_endpoint(
    node: Node, settings: HandshakeSettings, *, max_message_bytes: int, sse_retry_ms: int
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of `GET {rest}/push`: WebSocket upgrades are served here, event streams by
    `transports/sse.py`, anything else gets a 406.

    A WebSocket connection lives in this handler's frame for its whole life, so the frame is
    kept to one (no nested serving coroutine) and holds no handshake state. Keep-alive pings
    come from the node's single keep-alive timer (aiohttp's per-connection heartbeat timer is
    off); any frame from the client, a pong included, proves it alive.
    """

    async def push(request: web.Request) -> web.StreamResponse:
        upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        if not upgrade and "text/event-stream" not in request.headers.get(hdrs.ACCEPT, ""):
            return json_error(
                406,
                ErrorCode.NOT_ACCEPTABLE,
                "open a WebSocket (Upgrade: websocket) or an event stream "
                "(Accept: text/event-stream) on this URL",
            )
        try:
            handshake = await accept(request, node, settings)
        except ProtocolError as exc:
            node.metrics.handshake_failures.labels(exc.code.value).inc()
            return error_response(exc)
        if not upgrade:
            stream = serve_sse(request, node, handshake, retry_ms=sse_retry_ms)
            del handshake  # the stream's coroutine drops its own reference when open
            return await stream
        ws = web.WebSocketResponse(max_msg_size=max_message_bytes, compress=False, autoping=False)
        await ws.prepare(request)
        writer = WebSocketFrameWriter(ws, request)
        session = await handshake.open_session(node, writer)
        del handshake
        try:
            while True:
                message = await ws.receive()
                writer.awaiting_pong = False
                kind = message.type
                if kind is WSMsgType.TEXT:
                    await node.handle_message(session, message.data)
                elif kind is WSMsgType.PING:
                    await ws.pong(message.data)
                elif kind is WSMsgType.PONG:
                    continue
                elif kind is WSMsgType.BINARY:
                    session.send_control(
                        error_message(
                            ErrorCode.BINARY_NOT_SUPPORTED, "send JSON commands as text frames"
                        )
                    )
                elif kind is WSMsgType.ERROR:
                    close_request = message.data
                    if isinstance(close_request, _CloseRequest):
                        await _close(ws, writer, close_request)
                    elif ws.close_code == CloseCode.MESSAGE_TOO_BIG:
                        node.metrics.errors.labels(ErrorCode.MESSAGE_TOO_LARGE.value).inc()
                        session.close_code = CloseCode.MESSAGE_TOO_BIG
                        session.close_reason = "message too big"
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    break
        finally:
            if session.close_code is None and ws.close_code is not None:
                session.close_reason = f"client closed ({ws.close_code})"
            await node.close_session(session)
        return ws

    return push


async def _close(
    ws: web.WebSocketResponse, writer: WebSocketFrameWriter, request: _CloseRequest
) -> None:
    """Run a server-initiated close from the read loop (see the module docstring)."""
    if request.code is CloseCode.SLOW_CONSUMER:
        writer.shut(request.code, request.reason)
    else:
        await ws.close(code=int(request.code), message=request.reason.encode()[:120])
