"""The long fuzz run (issue 14): millions of hostile inputs against a live `livepush serve`.

    python bench/fuzz.py                      # 1,000,000 WebSocket inputs + 20,000 HTTP bodies
    python bench/fuzz.py --inputs 100000 --http 2000 --quick-json out.json

Inputs come from a seeded generator (`--seed`, so a run can be repeated): command-shaped JSON
with random types, fields and values (nesting up to 200 levels), arbitrary text and bytes as
messages, and frame-level garbage (reserved bits, unknown opcodes, unmasked frames, bad close
frames, endless fragments, oversized lengths) that costs the connection. `--connections`
WebSocket connections send them as fast as the server takes them and read every answer; a
connection the server closes is counted by its close code and replaced. Alongside, random
bodies go to the publish and execution events APIs and to the SSE command POST.

The server runs with `rate_limit` and `handshake_rate` raised, so inputs reach the decoders
instead of the rate limiter (which answers with its own code, 4029). Pass means: no close
1011, no HTTP 5xx, no error reply with a code outside `ErrorCode`, no traceback in the server's
log, the node still answers `/healthz`, and its RSS at the end within `--rss-limit-mb` of its
start. The figures are printed as markdown and written as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import struct
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from livepush.auth.tokens import mint_token  # noqa: E402
from livepush.protocol.errors import ErrorCode  # noqa: E402

CODES = {code.value for code in ErrorCode}
TYPES = [
    "ping",
    "subscribe",
    "unsubscribe",
    "refresh",
    "presence",
    "workflowOpened",
    "workflowClosed",
    "executionSnapshot",
    "writeAccessRequested",
    "writeAccessReleaseRequested",
    "writeAccessHeartbeat",
    "presenceUpdate",
    "ephemeral",
    "nodeLockRequested",
    "nodeLockReleased",
    "heartbeat",
    "nope",
    "",
]
FIELDS = ["channel", "since", "token", "workflowId", "state", "kind", "data", "nodeId", "id"]
_LISTENING = re.compile(rb"listening on http://[^:]+:(\d+)")


class Inputs:
    """The seeded input generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth > 3 or roll < 0.45:
            return rng.choice(
                [
                    None,
                    True,
                    rng.randint(-(2**70), 2**70),
                    rng.random() * 1e300,
                    "".join(
                        chr(rng.randint(0, 0x10FFFF) % 0xD800) for _ in range(rng.randint(0, 12))
                    ),
                    "workflow:1",
                    "execution:1",
                    "user:mallory",
                    "system",
                    {"epoch": "e", "offset": rng.randint(-5, 10**20)},
                ]
            )
        if roll < 0.7:
            return [self.value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {
            rng.choice([*FIELDS, "x", ""]): self.value(depth + 1) for _ in range(rng.randint(0, 4))
        }

    def command(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            depth = rng.randint(50, 200)
            return (
                b'{"type":"presenceUpdate","id":1,"workflowId":"1","state":'
                + (b'{"a":' * depth + b"1" + b"}" * depth)
                + b"}"
            )
        if roll < 0.15:  # arbitrary text (invalid UTF-8 is frame-level garbage, below)
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60)))
            return raw.decode(errors="replace").encode()
        obj: dict[str, Any] = {"type": rng.choice(TYPES) if rng.random() < 0.9 else self.value()}
        if rng.random() < 0.8:
            obj["id"] = rng.randint(0, 10**6) if rng.random() < 0.9 else self.value()
        for name in rng.sample(FIELDS, rng.randint(0, 4)):
            obj[name] = self.value()
        return json.dumps(obj).encode()

    def frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
        """A masked client frame."""
        mask = self.rng.getrandbits(32).to_bytes(4, "big")
        length = len(payload)
        first = (0x80 if fin else 0) | opcode
        if length < 126:
            header = bytes((first, 0x80 | length))
        elif length < 65536:
            header = struct.pack("!BBH", first, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, length)
        key = (mask * (length // 4 + 1))[:length]
        masked = (
            (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
            if length
            else b""
        )
        return header + mask + masked

    def garbage(self) -> bytes:
        """Frame-level garbage: the connection pays for it."""
        rng = self.rng
        kind = rng.randrange(7)
        if kind == 0:
            return bytes((0x80 | 0x40 | 1, 0x80)) + b"\x00" * 4  # reserved bit
        if kind == 1:
            return bytes((0x80 | rng.choice([3, 4, 5, 6, 7, 11, 12]), 0x80)) + b"\x00" * 4
        if kind == 2:
            return bytes((0x81, 5)) + b"hello"  # unmasked
        if kind == 3:
            return self.frame(8, b"\x00\x01")  # invalid close code
        if kind == 4:
            return self.frame(1, b"\xff\xfe")  # invalid UTF-8
        if kind == 5:
            return self.frame(1, b"{", fin=False) + self.frame(0, b"", fin=False) * 2000
        return struct.pack("!BBQ", 0x81, 0x80 | 127, 2**40) + b"\x00" * 4  # oversized


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.answers = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[int] = collections.Counter()
        self.unknown_codes: collections.Counter[str] = collections.Counter()
        self.http: collections.Counter[int] = collections.Counter()
        self.http_sent = 0


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def one_connection(
    port: int, token: str, name: str, inputs: Inputs, budget: list[int], tally: Tally
) -> None:
    """Keep one WebSocket connection busy until the budget is spent, replacing it when the
    server closes it."""
    generation = 0
    while budget[0] > 0:
        generation += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        writer.write(
            f"GET /rest/push?pushRef={name}-{generation}&token={token} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:80]!r}")
        closed = asyncio.Event()

        async def read(reader: asyncio.StreamReader, closed: asyncio.Event) -> None:
            try:
                while True:
                    first, second = await reader.readexactly(2)
                    length = second & 0x7F
                    if length == 126:
                        (length,) = struct.unpack("!H", await reader.readexactly(2))
                    elif length == 127:
                        (length,) = struct.unpack("!Q", await reader.readexactly(8))
                    payload = await reader.readexactly(length)
                    opcode = first & 0x0F
                    if opcode == 8:
                        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                        tally.closes[code] += 1
                        return
                    if opcode == 1:
                        message = json.loads(payload)
                        if message.get("type") in ("reply", "error"):
                            tally.answers += 1
                        if message.get("type") == "error":
                            code = message["data"]["code"]
                            tally.errors[code] += 1
                            if code not in CODES:
                                tally.unknown_codes[code] += 1
            except (asyncio.IncompleteReadError, ConnectionError):
                tally.closes[1006] += 1
            finally:
                closed.set()

        reading = asyncio.create_task(read(reader, closed))
        try:
            while budget[0] > 0 and not closed.is_set():
                batch = []
                for _ in range(50):
                    if inputs.rng.random() < 0.002:
                        batch.append(inputs.garbage())
                        break
                    batch.append(inputs.frame(1, inputs.command()))
                budget[0] -= len(batch)
                tally.sent += len(batch)
                writer.write(b"".join(batch))
                try:
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(0)
            if not closed.is_set():
                writer.write(inputs.frame(8, b"\x03\xe8"))
            await asyncio.wait_for(closed.wait(), 10)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            reading.cancel()
            writer.close()


async def http_fuzz(
    port: int, api_key: str, token: str, inputs: Inputs, count: int, tally: Tally
) -> None:
    async with aiohttp.ClientSession() as http:
        targets = [
            (f"http://127.0.0.1:{port}/api/v1/publish", {"Authorization": f"Bearer {api_key}"}),
            (
                f"http://127.0.0.1:{port}/api/v1/executions/events",
                {"Authorization": f"Bearer {api_key}"},
            ),
            (
                f"http://127.0.0.1:{port}/rest/push?pushRef=nobody",
                {"Authorization": f"Bearer {token}"},
            ),
        ]
        for i in range(count):
            url, headers = targets[i % len(targets)]
            body = (
                inputs.command()
                if inputs.rng.random() < 0.5
                else json.dumps(inputs.value()).encode()
            )
            async with http.post(url, data=body, headers=headers) as response:
                tally.http[response.status] += 1
                tally.http_sent += 1
                if response.status >= 400:
                    answer = await response.json()
                    code = answer["error"]["code"]
                    if code not in CODES:
                        tally.unknown_codes[code] += 1


async def main(args: argparse.Namespace) -> int:
    secret = os.urandom(32).hex()
    api_key = "fuzz-" + os.urandom(12).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEPUSH_")}
    env.update(
        LIVEPUSH_JWT_SECRET=secret,
        LIVEPUSH_API_KEY=api_key,
        LIVEPUSH_RATE_LIMIT="1000000",
        LIVEPUSH_RATE_BURST="1000000",
        LIVEPUSH_HANDSHAKE_RATE="0",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livepush.cli",
        "serve",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    port = 0
    while not port:
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError("server exited")
        if match := _LISTENING.search(line):
            port = int(match.group(1))
    log: list[bytes] = []

    async def drain() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            log.append(line)

    draining = asyncio.create_task(drain())
    token = mint_token(secret, "mallory", workflows=["1"], ttl=24 * 3600)
    tally = Tally()
    inputs = Inputs(args.seed)
    await asyncio.sleep(0.5)
    rss_start = rss(process.pid)
    samples = [rss_start]
    budget = [args.inputs]
    started = time.monotonic()

    async def sample() -> None:
        while True:
            await asyncio.sleep(1)
            samples.append(rss(process.pid))

    sampler = asyncio.create_task(sample())
    await asyncio.gather(
        *(
            one_connection(port, token, f"f{i}", Inputs(args.seed + i + 1), budget, tally)
            for i in range(args.connections)
        ),
        http_fuzz(port, api_key, token, inputs, args.http, tally),
    )
    elapsed = time.monotonic() - started
    sampler.cancel()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        healthy = response.status == 200
    await asyncio.sleep(1)
    rss_end = rss(process.pid)
    process.terminate()
    await process.wait()
    await draining
    tracebacks = sum(1 for line in log if b"Traceback" in line)
    result = {
        "inputs": tally.sent,
        "http_bodies": tally.http_sent,
        "seconds": round(elapsed, 1),
        "answers": tally.answers,
        "errors": dict(tally.errors.most_common()),
        "closes": {str(k): v for k, v in tally.closes.most_common()},
        "http_statuses": {str(k): v for k, v in sorted(tally.http.items())},
        "unknown_codes": dict(tally.unknown_codes),
        "tracebacks": tracebacks,
        "healthy_after": healthy,
        "rss_mb": {
            "start": round(rss_start / 2**20, 1),
            "peak": round(max(samples) / 2**20, 1),
            "end": round(rss_end / 2**20, 1),
        },
    }
    failures = []
    if tally.closes.get(1011):
        failures.append("close 1011")
    if any(status >= 500 for status in tally.http):
        failures.append("HTTP 5xx")
    if tally.unknown_codes:
        failures.append("unknown error codes")
    if tracebacks:
        failures.append("tracebacks in the server log")
    if not healthy:
        failures.append("not healthy after")
    if rss_end - rss_start > args.rss_limit_mb * 2**20:
        failures.append("RSS grew")
    result["failures"] = failures
    print(json.dumps(result, indent=2))
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, json.dumps(result, indent=2) + "\n")
    if tracebacks:
        print(b"".join(line for line in log if line.strip())[-3000:].decode(errors="replace"))
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--http", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--rss-limit-mb", type=float, default=50)
    parser.add_argument("--out", default="")
    sys.exit(asyncio.run(main(parser.parse_args())))
