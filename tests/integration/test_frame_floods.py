"""Frame floods from one hostile WebSocket connection against a real `livepush serve` process:
the node's memory stays flat and the offender alone is cut, with a stable close code.

Found by trying: a client that pings as fast as it can and never reads grew the node from 67 MB
to 1.65 GB in 25 s (the pongs were written outside every bound); a text message of empty
continuation frames that never ends grew it from 69 MB to 552 MB (the fragment limit counted
payload bytes only). Each attack here runs from a thread with a plain blocking socket, as fast
as the loopback takes it, for at most `ATTACK_SECONDS`, while the server's RSS is sampled.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import aiohttp
import pytest

from livepush.auth.tokens import mint_token
from livepush.protocol.errors import CloseCode
from tests.conftest import API_KEY, SECRET
from tests.integration.helpers import command, receive_json
from tests.integration.process import ServerProcess, serve_process
from tests.integration.test_websocket_frames import CLOSE, CONTINUATION, PING, TEXT, frame

ENV = {"LIVEPUSH_JWT_SECRET": SECRET, "LIVEPUSH_API_KEY": API_KEY}
ATTACK_SECONDS = 4.0
#: How much the node may grow during an attack (the interpreter's own noise is a few MB).
RSS_GROWTH_LIMIT = 40 * 1024 * 1024


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_raw(server: ServerProcess, push_ref: str) -> socket.socket:
    """A WebSocket upgrade on a blocking socket with a small receive buffer; returns the socket
    after the 101 (the `connected` greeting is left unread)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    token = mint_token(SECRET, "mallory", workflows=["1"])
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /rest/push?pushRef={push_ref}&token={token} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_close_code(sock: socket.socket, timeout: float = 10.0) -> int | None:
    """Read what the server sent (greeting, pongs...) up to its close frame; its code, or None
    if the stream ended without one."""
    sock.settimeout(timeout)
    buffer = b""
    while True:
        while len(buffer) >= 2:
            length = buffer[1] & 0x7F
            header = 2 + {126: 2, 127: 8}.get(length, 0)
            if len(buffer) < header:
                break
            if length == 126:
                length = struct.unpack("!H", buffer[2:4])[0]
            elif length == 127:
                length = struct.unpack("!Q", buffer[2:10])[0]
            if len(buffer) < header + length:
                break
            opcode = buffer[0] & 0x0F
            payload = buffer[header : header + length]
            buffer = buffer[header + length :]
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0]) if payload else None
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        if not chunk:
            return None
        buffer += chunk


@dataclass
class Attack:
    """What an attack did and what the node's memory did meanwhile."""

    sent_bytes: int = 0
    cut_after: float | None = None
    samples: list[int] = field(default_factory=list)


def run_attack(server: ServerProcess, sock: socket.socket, chunk: bytes) -> Attack:
    """Send `chunk` over and over for `ATTACK_SECONDS` or until the server stops taking it,
    sampling the server's RSS every 50 ms."""
    attack = Attack()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            attack.samples.append(rss(server.process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sock.settimeout(1.0)
    start = time.monotonic()
    try:
        while time.monotonic() - start < ATTACK_SECONDS:
            try:
                sock.sendall(chunk)
            except TimeoutError:
                continue  # the server stopped reading (its own back-pressure): keep pushing
            except OSError:
                attack.cut_after = time.monotonic() - start
                break
            attack.sent_bytes += len(chunk)
    finally:
        done.set()
        sampler.join()
    return attack


async def flood(chunk: bytes) -> tuple[Attack, int | None, int]:
    """Run one flood against a fresh server; (the attack, the close code the attacker got,
    the server's RSS before). A bystander on the same node must stay served throughout."""
    async with serve_process(env=ENV) as server, aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"ws://127.0.0.1:{server.port}/rest/push?pushRef=bystander"
            f"&token={mint_token(SECRET, 'bob', workflows=['1'])}"
        ) as bystander:
            assert (await receive_json(bystander))["type"] == "connected"
            await asyncio.sleep(0.5)  # start-up allocations settle
            before = rss(server.process.pid)
            sock = await asyncio.to_thread(open_raw, server, "attacker")
            try:
                attack = await asyncio.to_thread(run_attack, server, sock, chunk)
                code = await asyncio.to_thread(read_close_code, sock)
            finally:
                sock.close()
            reply = await command(bystander, {"type": "ping", "id": 1})
            assert reply["type"] == "reply"
            assert not bystander.closed
        return attack, code, before


def assert_flat(attack: Attack, before: int) -> None:
    peak = max(attack.samples)
    print(  # shown with `pytest -s`: the figures docs/security.md quotes
        f"RSS {before / 2**20:.1f} -> peak {peak / 2**20:.1f} MB; "
        f"{attack.sent_bytes / 2**20:.1f} MB sent; cut after {attack.cut_after} s"
    )
    assert peak - before < RSS_GROWTH_LIMIT, (
        f"RSS grew from {before / 2**20:.0f} MB to {peak / 2**20:.0f} MB "
        f"({attack.sent_bytes / 2**20:.0f} MB sent)"
    )


async def test_ping_flood_without_reading_is_cut_and_memory_stays_flat() -> None:
    pings = frame(PING, b"x" * 125) * 400
    attack, code, before = await flood(pings)
    assert_flat(attack, before)
    assert code == CloseCode.RATE_LIMITED


async def test_message_of_endless_empty_fragments_is_cut_and_memory_stays_flat() -> None:
    opening = frame(TEXT, b'{"type":', fin=False)
    empty = frame(CONTINUATION, b"", fin=False)

    async with serve_process(env=ENV) as server:
        await asyncio.sleep(0.5)
        before = rss(server.process.pid)
        sock = await asyncio.to_thread(open_raw, server, "attacker")
        try:
            sock.sendall(opening)
            attack = await asyncio.to_thread(run_attack, server, sock, empty * 2000)
            code = await asyncio.to_thread(read_close_code, sock)
        finally:
            sock.close()
    assert_flat(attack, before)
    assert code == CloseCode.MESSAGE_TOO_BIG


async def test_deeply_nested_messages_without_reading_are_cut_and_memory_stays_flat() -> None:
    """20 KB messages of 10,000 nested arrays, as fast as they go, never reading the errors
    they earn: each is refused before it is decoded (`invalid_json`), the errors fill the
    bounded queue or the rate runs out, and the connection is cut."""
    nested = b'{"type":"ping","id":1,"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    attack, code, before = await flood(frame(TEXT, nested) * 20)
    assert_flat(attack, before)
    assert code in (CloseCode.RATE_LIMITED, CloseCode.SLOW_CONSUMER)


async def test_frames_after_a_close_without_reading_hold_nothing() -> None:
    """The client closes, then keeps sending close frames and pings and never reads: the
    server echoes the first close once and holds nothing for the rest."""
    attack, code, before = await flood(
        frame(CLOSE, b"\x03\xe8") + (frame(CLOSE, b"\x03\xe8bye") + frame(PING, b"")) * 300
    )
    assert_flat(attack, before)
    assert code == 1000  # the echo of the client's own close


@pytest.mark.parametrize("fragments", [2, 200])
async def test_fragmented_messages_within_the_limit_still_work(fragments: int) -> None:
    """The fragment cost leaves room for sane fragmentation: a command in 2 fragments, and
    in 200 (most of them empty)."""
    body = b'{"type":"ping","id":7}'
    step = max(1, len(body) // fragments)
    parts = [body[i : i + step] for i in range(0, len(body), step)]
    parts += [b""] * (fragments - len(parts))
    frames = b"".join(
        frame(TEXT if i == 0 else CONTINUATION, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    )
    async with serve_process(env=ENV) as server:
        sock = await asyncio.to_thread(open_raw, server, "fragmenter")
        try:
            sock.sendall(frames)
            sock.settimeout(5)
            received = b""
            while b'"id":7' not in received:
                chunk = sock.recv(65536)
                assert chunk, "closed"
                received += chunk
            assert b'"type":"reply"' in received
        finally:
            sock.close()
