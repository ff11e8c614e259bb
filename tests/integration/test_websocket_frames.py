"""RFC 6455 at the byte level: a raw-socket client that writes exactly the frames each case
needs (masking, fragmentation, control frames, bad frames, split writes) against the server's
own frame reader, and checks the bytes that come back."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

import pytest

from livepush.protocol.errors import CloseCode
from tests.conftest import RunningServer, ServerFactory

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # the example of RFC 6455 section 1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """A client frame."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, (0x80 if mask else 0) | length))
    elif length < 65536:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
    else:
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


class RawWebSocket:
    """A WebSocket client on a bare TCP stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls,
        server: RunningServer,
        push_ref: str,
        *,
        key: str = RFC_KEY,
        version: str = "13",
        after_request: bytes = b"",
    ) -> tuple[RawWebSocket, int, dict[str, str], bytes]:
        """Send the upgrade request; returns the client, the status, headers and body."""
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        path = server.push_url(push_ref, server.token()).removeprefix(server.url)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: {version}\r\n\r\n"
        ).encode()
        writer.write(request + after_request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        body = b""
        if status != 101 and "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        return cls(reader, writer), status, headers, body

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def send_split(self, data: bytes, size: int = 1) -> None:
        """Write `data` in pieces of `size` bytes, each its own TCP segment."""
        for i in range(0, len(data), size):
            self.writer.write(data[i : i + size])
            await self.writer.drain()
            await asyncio.sleep(0.001)

    async def read_frame(self, timeout: float = 5.0) -> tuple[bool, int, bytes]:
        """The next server frame: (fin, opcode, payload); server frames are never masked."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        assert not second & 0x80, "server frames must not be masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return bool(first & 0x80), first & 0x0F, payload

    async def read_message(self, timeout: float = 5.0) -> Any:
        """The next text message, decoded (control frames in between are returned as such)."""
        fin, opcode, payload = await self.read_frame(timeout)
        assert fin
        assert opcode == TEXT, (opcode, payload)
        return json.loads(payload)

    async def read_close(self, timeout: float = 5.0) -> tuple[int, str]:
        """Skip text frames until the close frame; returns its code and reason."""
        while True:
            _, opcode, payload = await self.read_frame(timeout)
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True once the server ended the stream."""
        data = await asyncio.wait_for(self.reader.read(), timeout)
        return data == b""

    async def connected(self) -> dict[str, Any]:
        greeting = await self.read_message()
        assert greeting["type"] == "connected"
        return dict(greeting)

    def close(self) -> None:
        self.writer.close()


def command(payload: dict[str, Any], **options: Any) -> bytes:
    return frame(TEXT, json.dumps(payload).encode(), **options)


async def test_handshake_answers_with_the_rfc_accept_key(server: RunningServer) -> None:
    ws, status, headers, _ = await RawWebSocket.open(server, "f1")
    assert status == 101
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    await ws.connected()
    ws.close()


@pytest.mark.parametrize(
    ("key", "version", "needle"),
    [
        (RFC_KEY, "8", "version"),
        ("", "13", "Sec-WebSocket-Key"),
        ("not base64!", "13", "Sec-WebSocket-Key"),
        (base64.b64encode(b"short").decode(), "13", "Sec-WebSocket-Key"),
    ],
)
async def test_malformed_upgrade_gets_a_json_400(
    server: RunningServer, key: str, version: str, needle: str
) -> None:
    ws, status, headers, body = await RawWebSocket.open(server, "f2", key=key, version=version)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request"
    assert needle in error["message"]
    if version != "13":
        assert headers["sec-websocket-version"] == "13"
    ws.close()


async def test_frames_split_into_single_bytes_are_reassembled(server: RunningServer) -> None:
    ws, _, _, _ = await RawWebSocket.open(server, "f3")
    await ws.connected()
    await ws.send_split(command({"type": "ping", "id": 1}) + command({"type": "ping", "id": 2}))
    assert (await ws.read_message())["id"] == 1
    assert (await ws.read_message())["id"] == 2
    ws.close()


async def test_many_frames_in_one_write_are_handled_in_order(server: RunningServer) -> None:
    ws, _, _, _ = await RawWebSocket.open(server, "f4")
    await ws.connected()
    ws.send(b"".join(command({"type": "ping", "id": i}) for i in range(20)))
    ids = [(await ws.read_message())["id"] for _ in range(20)]
    assert ids == list(range(20))
    ws.close()


async def test_a_frame_sent_right_behind_the_request_is_not_lost(server: RunningServer) -> None:
    ws, status, _, _ = await RawWebSocket.open(
        server, "f5", after_request=command({"type": "ping", "id": "early"})
    )
    assert status == 101
    await ws.connected()
    assert (await ws.read_message())["id"] == "early"
    ws.close()


async def test_fragmented_message_with_a_ping_in_between(server: RunningServer) -> None:
    ws, _, _, _ = await RawWebSocket.open(server, "f6")
    await ws.connected()
    data = json.dumps({"type": "ping", "id": "frag"}).encode()
    ws.send(frame(TEXT, data[:5], fin=False))
    ws.send(frame(PING, b"are you there"))
    ws.send(frame(CONTINUATION, data[5:10], fin=False))
    ws.send(frame(CONTINUATION, data[10:]))
    fin, opcode, payload = await ws.read_frame()
    assert (fin, opcode, payload) == (True, PONG, b"are you there")
    assert (await ws.read_message())["id"] == "frag"
    ws.close()


async def test_large_message_with_a_64_bit_length(server_factory: ServerFactory) -> None:
    server = await server_factory(max_message_bytes=200_000)
    ws, _, _, _ = await RawWebSocket.open(server, "f7")
    await ws.connected()
    padding = "x" * 100_000
    ws.send(command({"type": "ping", "id": "big", "padding": padding}))
    assert (await ws.read_message())["id"] == "big"
    ws.close()


async def test_binary_frames_get_an_error_and_the_connection_stays(server: RunningServer) -> None:
    ws, _, _, _ = await RawWebSocket.open(server, "f8")
    await ws.connected()
    ws.send(frame(BINARY, b"\x00\x01"))
    error = await ws.read_message()
    assert error["type"] == "error"
    assert error["data"]["code"] == "binary_not_supported"
    ws.send(command({"type": "ping", "id": 9}))
    assert (await ws.read_message())["id"] == 9
    ws.close()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(TEXT, b'{"type":"ping"}', mask=False), CloseCode.PROTOCOL_ERROR),
        (frame(TEXT, b'{"type":"ping"}', rsv=4), CloseCode.PROTOCOL_ERROR),
        (frame(0x3, b"x"), CloseCode.PROTOCOL_ERROR),
        (frame(0xB, b"x"), CloseCode.PROTOCOL_ERROR),
        (frame(CONTINUATION, b"x"), CloseCode.PROTOCOL_ERROR),
        (frame(PING, b"x" * 126), CloseCode.PROTOCOL_ERROR),
        (frame(PING, b"x", fin=False), CloseCode.PROTOCOL_ERROR),
        (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), CloseCode.PROTOCOL_ERROR),
        (frame(TEXT, b"\xff\xfe"), CloseCode.INVALID_PAYLOAD),
        (frame(CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR),
        (frame(CLOSE, struct.pack("!H", 1005)), CloseCode.PROTOCOL_ERROR),
        (frame(CLOSE, struct.pack("!H", 1000) + b"\xff"), CloseCode.INVALID_PAYLOAD),
    ],
    ids=[
        "unmasked",
        "reserved-bit",
        "reserved-data-opcode",
        "reserved-control-opcode",
        "continuation-of-nothing",
        "long-ping",
        "fragmented-ping",
        "new-message-inside-fragmented",
        "invalid-utf8",
        "one-byte-close",
        "close-code-1005",
        "close-reason-not-utf8",
    ],
)
async def test_protocol_violations_close_with_their_code(
    server: RunningServer, data: bytes, code: CloseCode
) -> None:
    ws, _, _, _ = await RawWebSocket.open(server, "f9")
    await ws.connected()
    ws.send(data)
    close_code, _ = await ws.read_close()
    assert close_code == code
    assert await ws.at_eof()
    ws.close()
    await _until(lambda: not len(server.node.hub))


async def test_a_violation_affects_only_its_own_connection(server: RunningServer) -> None:
    bad, _, _, _ = await RawWebSocket.open(server, "f10a")
    good, _, _, _ = await RawWebSocket.open(server, "f10b")
    await bad.connected()
    await good.connected()
    bad.send(frame(TEXT, b"{}", mask=False))
    assert (await bad.read_close())[0] == CloseCode.PROTOCOL_ERROR
    good.send(command({"type": "ping", "id": "still"}))
    assert (await good.read_message())["id"] == "still"
    bad.close()
    good.close()


async def test_fragments_over_the_size_limit_close_with_1009(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(max_message_bytes=1024)
    ws, _, _, _ = await RawWebSocket.open(server, "f11")
    await ws.connected()
    ws.send(frame(TEXT, b"x" * 600, fin=False))
    ws.send(frame(CONTINUATION, b"x" * 600))
    close_code, reason = await ws.read_close()
    assert close_code == CloseCode.MESSAGE_TOO_BIG
    assert "too big" in reason
    ws.close()


async def test_client_close_is_echoed_and_the_session_ends(server: RunningServer) -> None:
    ws, _, _, _ = await RawWebSocket.open(server, "f12")
    await ws.connected()
    assert server.node.session("f12") is not None
    ws.send(frame(CLOSE, struct.pack("!H", 4000) + b"bye"))
    _, opcode, payload = await ws.read_frame()
    assert (opcode, struct.unpack("!H", payload[:2])[0]) == (CLOSE, 4000)
    assert await ws.at_eof()
    await _until(lambda: server.node.session("f12") is None)
    ws.close()


async def test_server_close_waits_for_the_client_close_frame(server: RunningServer) -> None:
    ws, _, _, _ = await RawWebSocket.open(server, "f13")
    await ws.connected()
    session = server.node.session("f13")
    assert session is not None
    session.close(CloseCode.REPLACED, "test")
    assert (await ws.read_close())[0] == CloseCode.REPLACED
    # the server keeps the socket open for the client's close frame...
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.reader.read(1), 0.2)
    ws.send(frame(CLOSE, struct.pack("!H", CloseCode.REPLACED)))
    # ...and ends the stream once it arrives
    assert await ws.at_eof()
    ws.close()


async def test_socket_drop_unregisters_the_session(server: RunningServer) -> None:
    ws, _, _, _ = await RawWebSocket.open(server, "f14")
    await ws.connected()
    ws.writer.transport.abort()
    await _until(lambda: server.node.session("f14") is None)


async def test_aiohttp_lets_go_of_upgraded_connections(server: RunningServer) -> None:
    """After the upgrade aiohttp's request handler is released: the server tracks no
    connection for an open WebSocket (what the per-connection memory figure relies on)."""
    ws, _, _, _ = await RawWebSocket.open(server, "f15")
    await ws.connected()
    aiohttp_server = server.runner.server
    assert aiohttp_server is not None
    await _until(lambda: not aiohttp_server.connections)
    ws.send(command({"type": "ping", "id": 1}))
    assert (await ws.read_message())["id"] == 1
    ws.close()


async def test_handover_without_handler_cancellation(server_factory: ServerFactory) -> None:
    """aiohttp's default (handler_cancellation=False) takes the other path out of the handler:
    its response write fails quietly on the released socket."""
    server = await server_factory(handler_cancellation=False)
    ws, _, _, _ = await RawWebSocket.open(server, "f16")
    await ws.connected()
    ws.send(command({"type": "ping", "id": 1}))
    assert (await ws.read_message())["id"] == 1
    assert server.runner.server is not None
    await _until(lambda: not server.runner.server.connections)  # type: ignore[union-attr]
    ws.send(frame(CLOSE, struct.pack("!H", 1000)))
    assert (await ws.read_close())[0] == 1000
    assert await ws.at_eof()
    ws.close()


async def _until(condition: Any, timeout: float = 5.0) -> None:
    """Poll server-side state that has no event of its own to wait on."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
