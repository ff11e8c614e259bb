"""A client that stops reading is cut off with close code 4008 while the others keep up."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from urllib.parse import urlsplit

import aiohttp

from tests.conftest import ServerFactory
from tests.integration.helpers import receive_json


async def open_raw_websocket(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client built on a bare socket with a tiny receive buffer, which the test
    then simply stops reading from."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_close_code(reader: asyncio.StreamReader) -> tuple[int, int]:
    """Read frames until the close frame; returns (text frames seen, close code)."""
    frames = 0
    while True:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        payload = await reader.readexactly(length)
        opcode = first & 0x0F
        if opcode == 0x8:
            return frames, struct.unpack("!H", payload[:2])[0]
        frames += 1


async def test_slow_consumer_is_cut_while_others_receive_everything(
    server_factory: ServerFactory, http: aiohttp.ClientSession
):
    server = await server_factory(max_queue_bytes=256 * 1024, max_queue_messages=10_000)
    slow_reader, slow_writer = await open_raw_websocket(
        server.push_url("slow", server.token("slowpoke"), channels="workflow:1")
    )
    fast = [
        await http.ws_connect(
            server.push_url(f"fast{i}", server.token(f"u{i}"), channels="workflow:1")
        )
        for i in range(2)
    ]
    for ws in fast:
        assert (await receive_json(ws))["type"] == "connected"

    total, blob = 1000, "x" * 16_000

    async def read_all(ws: aiohttp.ClientWebSocketResponse) -> list[int]:
        return [(await receive_json(ws, timeout=30))["data"]["i"] for _ in range(total)]

    readers = [asyncio.create_task(read_all(ws)) for ws in fast]
    # Small batches: the fast clients share this test's event loop with the server, so they
    # can only read between two publish requests.
    for start in range(0, total, 4):
        batch = [
            {"type": "step", "data": {"i": i, "blob": blob}, "channel": "workflow:1"}
            for i in range(start, start + 4)
        ]
        status, _ = await server.publish(http, {"messages": batch})
        assert status == 200
    for received in await asyncio.gather(*readers):
        assert received == list(range(total))

    frames, code = await asyncio.wait_for(read_close_code(slow_reader), 30)
    assert code == 4008
    assert frames < total
    slow_writer.close()

    async with http.get(f"{server.url}/metrics") as response:
        metrics = await response.text()
    assert 'livepush_dropped_messages_total{reason="slow_consumer"}' in metrics
    assert 'livepush_disconnects_total{reason="slow_consumer"} 1.0' in metrics
    for ws in fast:
        await ws.close()
