"""The Server-Sent Events transport: a one-way stream down, commands up by HTTP POST.

Each publication is one event whose `id:` holds the positions of every channel of the
connection (`channel|epoch|offset,...`), so a browser's automatic reconnect sends them back as
`Last-Event-ID` and the server resumes every channel exactly; subscribing or leaving a channel
writes an id-only event so the id stays current. Events are written straight to the socket as
HTTP/1.1 chunks (the `data:` part is built once per publication and shared).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from livepush.core.node import Node
from livepush.core.session import GONE, PAUSED, SENT
from livepush.protocol.envelope import Publication, StreamPosition, control_message
from livepush.protocol.errors import CloseCode
from livepush.protocol.resume import format_positions
from livepush.transports.handshake import Handshake

log = logging.getLogger(__name__)

#: Connections that may be closed by reconnecting clients: these codes ask them to reconnect.
_RECONNECT_CODES = {
    CloseCode.SERVICE_RESTART,
    CloseCode.SLOW_CONSUMER,
    CloseCode.GOING_AWAY,
    CloseCode.INTERNAL_ERROR,
}


class SseFrameWriter:
    """`FrameWriter` over a streaming HTTP response."""

    __slots__ = ("_chunked", "_id", "_positions", "_protocol", "_transport", "closed")
    transport = "sse"
    tracks_positions = True

    def __init__(self, request: web.Request, chunked: bool) -> None:
        self._transport: Any = request.transport
        self._protocol: Any = request.protocol
        self._chunked = chunked
        self._positions: dict[str, StreamPosition] = {}
        self._id = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def encode(self, publication: Publication) -> bytes:
        """`id:` (per connection) + the shared `data:` part."""
        data = publication.sse_data
        if data is None:
            data = publication.sse_data = b"data: " + publication.payload + b"\n\n"
        if publication.offset is None or publication.epoch is None:
            return data
        self._positions[publication.channel] = StreamPosition(publication.epoch, publication.offset)
        self._id = format_positions(self._positions).encode()
        return b"id: " + self._id + b"\n" + data

    def send(self, publications: Publication | list[Publication]) -> int:
        """Write publications as events in one chunk (see `FrameWriter.send`)."""
        if self.paused:
            return PAUSED
        if isinstance(publications, list):
            data = b"".join([self.encode(publication) for publication in publications])
        else:
            data = self.encode(publications)
        return SENT if self.write(data) else GONE

    def encode_control(self, payload: bytes) -> bytes:
        """A control message as a plain `data:` event (clients dispatch on its `type`)."""
        return b"data: " + payload + b"\n\n"

    def encode_mark(self, positions: Mapping[str, StreamPosition | None]) -> bytes:
        """An id-only event: updates `Last-Event-ID` without firing a message event."""
        for channel, position in positions.items():
            if position is None:
                self._positions.pop(channel, None)
            else:
                self._positions[channel] = position
        self._id = format_positions(self._positions).encode()
        return b"id: " + self._id + b"\n\n"

    @property
    def paused(self) -> bool:
        """True while the socket's buffer is over its high-water mark."""
        return bool(self._protocol.writing_paused)

    def write(self, data: bytes) -> bool:
        """Write one or more events as one chunk."""
        transport = self._transport
        if self.closed.done():
            return False
        if transport is None or transport.is_closing():
            self.closed.set_result(None)
            return False
        if self._chunked:
            transport.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            transport.write(data)
        return True

    async def drain(self) -> None:
        """Wait for the socket buffer to drain."""
        await self._protocol._drain_helper()

    def close(self, code: CloseCode, reason: str) -> None:
        """Tell the client why the stream ends, then end it."""
        if self.closed.done():
            return
        self.write(
            self.encode_control(
                control_message(
                    "disconnect",
                    {"code": int(code), "reason": reason, "reconnect": code in _RECONNECT_CODES},
                )
            )
        )
        self.closed.set_result(None)

    def ping(self) -> bool:
        """A comment line that keeps proxies from timing the stream out (skipped while the
        socket is backed up: the stream is not idle then). A dead SSE peer shows itself by
        its connection closing, so this never reports one."""
        if not self.paused:
            self.write(b":ping\n\n")
        return True


async def serve_sse(
    request: web.Request, node: Node, handshake: Handshake, *, retry_ms: int
) -> web.StreamResponse:
    """Open the event stream and keep it until the client leaves or the server closes it."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache, no-transform",
            "X-Accel-Buffering": "no",
        }
    )
    chunked = request.version >= (1, 1)
    if chunked:
        response.enable_chunked_encoding()
    else:
        response.force_close()
    await response.prepare(request)
    await response.write(b":ok\nretry: %d\n\n" % retry_ms)
    writer = SseFrameWriter(request, chunked)
    session = await handshake.open_session(node, writer)
    del handshake  # not needed for the connection's lifetime
    try:
        await writer.closed
    finally:
        if not writer.closed.done():
            writer.closed.set_result(None)
        if session.close_code is None:
            session.close_reason = "client closed"
        await node.close_session(session)
    return response
