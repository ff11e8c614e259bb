"""The WebSocket transport (aiohttp).

Publications are written as pre-built frames: a server frame is unmasked, so the bytes of one
frame are identical for every recipient and are built once per publication (`ws_frame`), then
handed to each connection's transport with no per-recipient encoding. aiohttp still owns the
connection (handshake, reading, ping/pong, close); only data frames bypass its writer. This
is the one place that touches aiohttp internals (`_drain_helper`), covered by the tests.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from aiohttp import WSMsgType, web

from livepush.core.node import Node
from livepush.core.session import Session
from livepush.protocol.envelope import Publication, StreamPosition, error_message
from livepush.protocol.errors import CloseCode, ErrorCode
from livepush.transports.handshake import Handshake

log = logging.getLogger(__name__)

_OP_TEXT = 0x81  # FIN + text opcode


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server-to-client text frame."""
    length = len(payload)
    if length < 126:
        return bytes((_OP_TEXT, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", _OP_TEXT, 126, length) + payload
    return struct.pack("!BBQ", _OP_TEXT, 127, length) + payload


class WebSocketFrameWriter:
    """`FrameWriter` over an aiohttp WebSocket connection."""

    __slots__ = ("_closing", "_protocol", "_transport", "_ws")
    transport = "websocket"
    tracks_positions = False

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._ws = ws
        self._transport: Any = request.transport
        self._protocol: Any = request.protocol
        self._closing: asyncio.Task[bool] | None = None

    def encode(self, publication: Publication) -> bytes:
        """The publication's frame, built by the first recipient and shared by all."""
        frame = publication.ws_frame
        if frame is None:
            frame = publication.ws_frame = text_frame(publication.payload)
        return frame

    def encode_control(self, payload: bytes) -> bytes:
        """A control message frame."""
        return text_frame(payload)

    def encode_mark(self, channel: str, position: StreamPosition | None) -> bytes:
        """WebSocket clients read positions from the frames themselves."""
        return b""

    @property
    def paused(self) -> bool:
        """True while the socket's buffer is over its high-water mark."""
        return bool(self._protocol.writing_paused)

    def write(self, data: bytes) -> bool:
        """Write bytes, unless the connection is closing."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._ws.closed:
            return False
        transport.write(data)
        return True

    async def drain(self) -> None:
        """Wait for the socket buffer to go under its low-water mark."""
        await self._protocol._drain_helper()

    def close(self, code: CloseCode, reason: str) -> None:
        """Send a close frame with code and reason (in the background)."""
        if not self._ws.closed and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._ws.close(code=int(code), message=reason.encode()[:120])
            )

    async def wait_closed(self) -> None:
        """Wait for a server-initiated close handshake to finish (bounded by aiohttp's close
        timeout), so a draining server does not cut the socket under its close frame."""
        if self._closing is not None:
            await self._closing


async def serve_websocket(
    request: web.Request,
    node: Node,
    handshake: Handshake,
    *,
    max_message_bytes: int,
    ping_interval: float,
) -> web.WebSocketResponse:
    """Upgrade, then read client messages until the connection ends."""
    ws = web.WebSocketResponse(
        heartbeat=ping_interval, max_msg_size=max_message_bytes, compress=False
    )
    await ws.prepare(request)
    writer = WebSocketFrameWriter(ws, request)
    session = await node.open_session(
        handshake.push_ref,
        handshake.identity,
        writer,
        channels=handshake.channels,
        resume=handshake.resume,
    )
    try:
        await _read_loop(ws, node, session)
    finally:
        if session.close_code is None and ws.close_code is not None:
            _note_client_close(session, ws.close_code)
        try:
            await writer.wait_closed()
        finally:
            await node.close_session(session)
    return ws


async def _read_loop(ws: web.WebSocketResponse, node: Node, session: Session) -> None:
    while True:
        message = await ws.receive()
        kind = message.type
        if kind is WSMsgType.TEXT:
            await node.handle_message(session, message.data)
        elif kind is WSMsgType.BINARY:
            session.send_control(
                error_message(ErrorCode.BINARY_NOT_SUPPORTED, "send JSON commands as text frames")
            )
        elif kind is WSMsgType.ERROR:
            if ws.close_code == CloseCode.MESSAGE_TOO_BIG:
                node.metrics.errors.labels(ErrorCode.MESSAGE_TOO_LARGE.value).inc()
                session.close_code = CloseCode.MESSAGE_TOO_BIG
                session.close_reason = "message too big"
            return
        elif kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return


def _note_client_close(session: Session, code: int) -> None:
    session.close_reason = f"client closed ({code})"
