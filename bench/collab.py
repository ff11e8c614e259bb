#!/usr/bin/env python3
"""Collaboration room benchmark (issue 5): 50 editors in one workflow, moving cursors at 30 Hz
each and editing the canvas, against livepush and the stock Yjs server side by side.

    python bench/collab.py           # full run: 50 editors, 5 s warm-up + 25 s measured per
                                     # run, targets livepush, livepush-redis, livepush-yjs,
                                     # y-websocket, round-robin, 3 repetitions (~7 min)
    python bench/collab.py --quick   # smoke run: 6 editors, livepush targets only, ~15 s

Targets:

  livepush        `livepush serve` (memory engine, CRDT documents in a SQLite file): cursors
                  are n8n's `ephemeral` messages on the push endpoint
                  (`{rest}/push?pushRef=..`), coalesced by the server per tab per
                  `collab_tick` (50 ms) into `collabEphemeral` batches; canvas edits go
                  through the CRDT endpoint `{rest}/crdt/<wf>` (Yjs sync protocol)
  livepush-redis  the same workload on two `livepush serve --engine redis` processes sharing
                  one Redis; editors alternate between them (cursor and canvas connections of
                  one editor on the same node)
  livepush-yjs    livepush's CRDT endpoint used the way a stock y-websocket client uses it:
                  cursors as Yjs awareness states on the document's connection (coalesced
                  per crdt_awareness_tick, 50 ms; LIVEPUSH_CRDT_AWARENESS_TICK=0 relays each),
                  edits through the same Y.Doc sync
  y-websocket     the stock Yjs server, `@y/websocket-server` 0.1.1 (the server of y-websocket
                  3.x, bench/peers/y-websocket), same client workload as livepush-yjs
  livepush-tick33, livepush-tick10 (not by default): livepush with `collab_tick` 1/30 s, 10 ms

Every editor sends its cursor at `--cursor-hz` (30) with `t` = its `time.time()` and edits the
canvas at `--edit-hz` (1): it sets its own node's position in the Y.Map "nodes" of a pycrdt
document (`{"x", "y", "t", "s": editor, "n": seq}`). Receivers count what they get from the
others: cursor updates (inside batches, own excluded), frames, and canvas changes seen on their
own Y.Doc (map events after applying the update); latency = receive time - `t`.

The editors (a small RFC 6455 client on asyncio protocols, uvloop, one pycrdt Doc per editor)
run in `--gen-procs` generator processes (default 1) pinned to CPU 1; the server(s) are
pinned to CPU 0 (as bench/run.py); redis-server is not pinned. CPU of each is read from
/proc over the measured window. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import gc
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from executions import delete_redis_keys, redis_server_cpu
from run import (
    LOADGEN_CPU,
    RESULTS,
    SERVER_CPU,
    CpuWatch,
    Server,
    ServerSpec,
    cmd_output,
    cpu_seconds,
    livepush_spec,
    machine_info,
    quiesce,
    raise_nofile,
)

BENCH = Path(__file__).resolve().parent
SCRIPT = Path(__file__).resolve()
YWS_DIR = BENCH / "peers" / "y-websocket"
YWS_SERVER = YWS_DIR / "node_modules" / "@y" / "websocket-server" / "src" / "server.js"
DEFAULT_TARGETS = ["livepush", "livepush-redis", "livepush-yjs", "y-websocket"]
#: livepush with another `collab_tick`: 1/30 s (batches at the senders' rate), 10 ms
TICKS = {"livepush-tick33": 1 / 30, "livepush-tick10": 0.010}
ALL_TARGETS = [*DEFAULT_TARGETS, *TICKS]
#: targets whose cursors go through the push endpoint (the others': Yjs awareness)
PUSH_TARGETS = ("livepush", "livepush-redis", *TICKS)
WORKFLOW = "collab-bench"

# --------------------------------------------------------------------------- histograms

#: 0.1 ms buckets up to 2 s, then 10 ms buckets up to ~10 min.
_FINE_US, _FINE_N = 100, 20_000
_COARSE_US = 10_000


def bucket(us: int) -> int:
    if us < _FINE_US * _FINE_N:
        return max(0, us) // _FINE_US
    return _FINE_N + min(60_000, (us - _FINE_US * _FINE_N) // _COARSE_US)


def bucket_ms(index: int) -> float:
    """Upper bound of a bucket, in ms."""
    if index < _FINE_N:
        return (index + 1) * _FINE_US / 1000
    return (_FINE_US * _FINE_N + (index - _FINE_N + 1) * _COARSE_US) / 1000


class Hist:
    __slots__ = ("counts", "max_us", "n")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max_us = 0

    def add(self, us: int) -> None:
        b = bucket(us)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        if us > self.max_us:
            self.max_us = us

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "max_us": self.max_us, "counts": self.counts}

    @staticmethod
    def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
        counts: dict[int, int] = {}
        for p in parts:
            for k, v in p["counts"].items():
                counts[int(k)] = counts.get(int(k), 0) + v
        return {
            "n": sum(p["n"] for p in parts),
            "max_us": max((p["max_us"] for p in parts), default=0),
            "counts": counts,
        }


def percentiles(h: dict[str, Any]) -> dict[str, float | None]:
    n = h["n"]
    out: dict[str, float | None] = {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    if not n:
        out["max_ms"] = None
        return out
    items = sorted((int(k), v) for k, v in h["counts"].items())
    for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
        rank, seen = q * n, 0
        for k, v in items:
            seen += v
            if seen >= rank:
                out[name] = round(bucket_ms(k), 1)
                break
    out["max_ms"] = round(h["max_us"] / 1000, 1)
    return out


# --------------------------------------------------------------------------- wire helpers


def varuint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varuint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN, masked with a random key, as RFC 6455 requires)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    if n:
        keys = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
            n, "little"
        )
    return head + key + payload


def handshake_request(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://{host}:{port}\r\n\r\n"
    ).encode()


# --------------------------------------------------------------------------- the editors


class Totals:
    """What the editors of one generator process sent and received in the measured window."""

    def __init__(self) -> None:
        self.measuring = False
        self.cursor_sent = 0
        self.cursor_recv = 0  # updates from other editors (inside batches)
        self.cursor_own = 0  # own updates echoed back (livepush batches, awareness relays)
        self.cursor_frames = 0  # frames that carried cursor updates
        self.frames = 0  # every frame received
        self.bytes = 0  # payload bytes received
        self.sink_bytes = 0  # bytes received by editors that do not parse (--observers)
        self.edit_sent = 0
        self.edit_recv = 0  # canvas changes of other editors observed on a receiver's doc
        self.cursor_lat = Hist()
        self.edit_lat = Hist()
        self.send_lag = Hist()
        self.errors: list[str] = []

    def error(self, text: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(text)


class WsClient(asyncio.Protocol):
    """A minimal WebSocket client: handshake, unmasked server frames, pong, masked sends."""

    label = "ws"

    def __init__(self, totals: Totals, request: bytes) -> None:
        self.totals = totals
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.closed = False
        #: only count the bytes received (see --observers)
        self.sink = False
        #: distinct senders whose cursors this receiver got in the measured window
        self.senders: set[Any] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.label}: closed: {exc!r}"))
        else:
            self.totals.error(f"{self.label}: connection lost: {exc!r}")

    def data_received(self, data: bytes) -> None:
        if self.sink:
            if self.totals.measuring:
                self.totals.sink_bytes += len(data)
            return
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(
                    ConnectionError(f"{self.label}: {head.decode(errors='replace')[:300]}")
                )
                return
            self.upgraded = True
            self.on_open()
        now = time.time()
        totals = self.totals
        pos, size = 0, len(buf)
        view = memoryview(buf)
        try:
            while size - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                length, head_len = b1 & 0x7F, 2
                if length == 126:
                    if size - pos < 4:
                        break
                    length, head_len = struct.unpack_from("!H", buf, pos + 2)[0], 4
                elif length == 127:
                    if size - pos < 10:
                        break
                    length, head_len = struct.unpack_from("!Q", buf, pos + 2)[0], 10
                if size - pos < head_len + length:
                    break
                opcode = b0 & 0x0F
                start = pos + head_len
                pos = start + length
                if totals.measuring:
                    totals.frames += 1
                    totals.bytes += length
                if opcode == 1 or opcode == 2:
                    try:
                        self.on_message(view[start:pos], now)
                    except Exception as exc:  # counted as an error, the run goes on
                        totals.error(f"{self.label}: {exc!r} on {bytes(view[start:pos])[:200]!r}")
                elif opcode == 9:
                    self.send(0xA, bytes(view[start:pos]))
                elif opcode == 8:
                    totals.error(f"{self.label}: closed by the server: {bytes(view[start:pos])!r}")
                elif opcode != 0xA:
                    totals.error(f"{self.label}: unexpected opcode {opcode}")
        finally:
            view.release()
        del buf[:pos]

    def on_open(self) -> None:
        self.ready.set_result(None)

    def on_message(self, payload: memoryview, now: float) -> None:
        raise NotImplementedError

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(masked_frame(opcode, payload))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            with contextlib.suppress(Exception):
                self.send(0x8, struct.pack("!H", 1000))
            self.transport.close()


class _Cursor(msgspec.Struct):
    t: float = 0.0


class _Update(msgspec.Struct):
    clientId: str
    data: _Cursor


class _BatchData(msgspec.Struct):
    updates: list[_Update] = []


class _PushMessage(msgspec.Struct):
    type: str
    id: int | str | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")


_decode_push = msgspec.json.Decoder(_PushMessage).decode
_decode_batch = msgspec.json.Decoder(_BatchData).decode
_encode = msgspec.json.encode


class PushEditor(WsClient):
    """An editor tab on livepush's push endpoint: joins the room (n8n's `workflowOpened`),
    sends `ephemeral` cursors, reads `collabEphemeral` batches."""

    label = "push"

    def __init__(self, totals: Totals, request: bytes, push_ref: str, workflow: str) -> None:
        super().__init__(totals, request)
        self.push_ref = push_ref
        self.workflow = workflow
        self.joined = False

    def on_open(self) -> None:
        # joined once the server answers (an `id` makes it reply)
        self.send(0x1, _encode({"type": "workflowOpened", "workflowId": self.workflow, "id": 1}))

    def on_message(self, payload: memoryview, now: float) -> None:
        totals = self.totals
        if bytes(payload[:40]).find(b"collabEphemeral") >= 0:
            batch = _decode_batch(_decode_push(payload).data)
            if not totals.measuring:
                return
            own = self.push_ref
            counted = 0
            hist = totals.cursor_lat
            senders = self.senders
            for update in batch.updates:
                if update.clientId == own:
                    totals.cursor_own += 1
                    continue
                senders.add(update.clientId)
                counted += 1
                hist.add(int((now - update.data.t) * 1e6))
            totals.cursor_recv += counted
            totals.cursor_frames += 1
            return
        message = _decode_push(payload)
        if message.type == "reply" and message.id == 1 and not self.ready.done():
            self.ready.set_result(None)
        elif message.type == "error":
            totals.error(f"push error: {bytes(payload)[:300]!r}")
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(bytes(payload).decode()[:300]))

    def send_cursor(self, x: float, y: float) -> None:
        self.send(
            0x1,
            b'{"type":"ephemeral","workflowId":"%s","kind":"cursor","data":'
            b'{"x":%.1f,"y":%.1f,"t":%r}}' % (self.workflow.encode(), x, y, time.time()),
        )


class _AwCursor(msgspec.Struct):
    t: float = 0.0


class _AwState(msgspec.Struct):
    cursor: _AwCursor | None = None


_decode_aw = msgspec.json.Decoder(_AwState).decode


class YjsEditor(WsClient):
    """An editor's document connection speaking y-protocols (sync + awareness), with its own
    pycrdt Doc: to livepush's `{rest}/crdt/<wf>` or to y-websocket's `/<room>`."""

    label = "yjs"

    def __init__(self, totals: Totals, request: bytes, index: int, editors: int) -> None:
        from pycrdt import Doc, Map

        super().__init__(totals, request)
        self.index = index
        self.doc: Doc[Any] = Doc()
        self.nodes: Map[Any] = self.doc.get("nodes", type=Map)
        self.client_id = self.doc.client_id
        self.clock = 0
        self.applying = False
        self.edit_seq = 0
        #: last edit seq seen from each other editor (completeness)
        self.last_seen = [0] * editors
        self.synced = asyncio.get_running_loop().create_future()
        self._subs = [self.doc.observe(self._on_local), self.nodes.observe(self._on_nodes)]

    def on_open(self) -> None:
        from pycrdt import create_sync_message

        self.ready.set_result(None)
        # y-protocols: our step 1; the server answers with its step 2 (then we are synced)
        self.send(0x2, create_sync_message(self.doc))

    def _on_local(self, event: Any) -> None:
        if not self.applying:
            update = event.update
            self.send(0x2, b"\x00\x02" + varuint(len(update)) + update)

    def _on_nodes(self, event: Any) -> None:
        totals = self.totals
        now = time.time()
        for change in event.keys.values():
            value = change.get("newValue")
            if not isinstance(value, dict):
                continue
            sender = int(value.get("s", -1))
            if sender == self.index or sender < 0:
                continue
            seq = int(value.get("n", 0))
            if seq > self.last_seen[sender]:
                self.last_seen[sender] = seq
            if totals.measuring:
                totals.edit_recv += 1
                totals.edit_lat.add(int((now - float(value["t"])) * 1e6))

    def on_message(self, payload: memoryview, now: float) -> None:
        kind = payload[0]
        if kind == 1:  # awareness
            self._on_awareness(payload, now)
        elif kind == 0:  # sync
            step = payload[1]
            length, pos = read_varuint(payload, 2)
            data = bytes(payload[pos : pos + length])
            if step == 0:
                update = self.doc.get_update(data)
                self.send(0x2, b"\x00\x01" + varuint(len(update)) + update)
            else:
                self.applying = True
                try:
                    self.doc.apply_update(data)
                finally:
                    self.applying = False
                if step == 1 and not self.synced.done():
                    self.synced.set_result(None)
        elif kind == 2:
            self.totals.error(f"auth message from the server: {bytes(payload)[:200]!r}")

    def _on_awareness(self, payload: memoryview, now: float) -> None:
        totals = self.totals
        if not totals.measuring:
            return
        _, pos = read_varuint(payload, 1)  # length of the update
        count, pos = read_varuint(payload, pos)
        counted = 0
        for _ in range(count):
            client, pos = read_varuint(payload, pos)
            _, pos = read_varuint(payload, pos)  # clock
            length, pos = read_varuint(payload, pos)
            if client == self.client_id:
                totals.cursor_own += 1
                pos += length
                continue
            state = _decode_aw(payload[pos : pos + length])
            pos += length
            if state.cursor is None:
                continue
            self.senders.add(client)
            counted += 1
            totals.cursor_lat.add(int((now - state.cursor.t) * 1e6))
        if counted:
            totals.cursor_recv += counted
            totals.cursor_frames += 1

    def send_cursor(self, x: float, y: float) -> None:
        self.clock += 1
        state = b'{"cursor":{"x":%.1f,"y":%.1f,"t":%r}}' % (x, y, time.time())
        entry = b"\x01" + varuint(self.client_id) + varuint(self.clock)
        entry += varuint(len(state)) + state
        self.send(0x2, b"\x01" + varuint(len(entry)) + entry)

    def edit(self) -> None:
        self.edit_seq += 1
        i = self.edit_seq
        self.nodes[f"node{self.index}"] = {
            "x": float(100 + (i * 37) % 900),
            "y": float(100 + (i * 53) % 600),
            "t": time.time(),
            "s": self.index,
            "n": i,
        }


# --------------------------------------------------------------------------- generator process


def cursor_xy(index: int, k: int) -> tuple[float, float]:
    angle = (index * 0.7 + k * 0.05) % (2 * math.pi)
    return 500 + 300 * math.cos(angle), 400 + 200 * math.sin(angle)


async def generator(cfg: argparse.Namespace) -> None:
    """One generator process: its editors, paced by the start time the harness gives."""
    from livepush.auth.tokens import mint_token

    loop = asyncio.get_running_loop()
    totals = Totals()
    urls: list[tuple[str, int]] = []
    for base in cfg.urls.split(","):
        host, port = base.rsplit(":", 1)
        urls.append((host, int(port)))
    secret = os.environ.get("LIVEPUSH_BENCH_SECRET", "")
    indices = list(range(cfg.first, cfg.first + cfg.count))
    push: dict[int, PushEditor] = {}
    docs: dict[int, YjsEditor] = {}
    limit = asyncio.Semaphore(20)

    async def connect(i: int) -> None:
        host, port = urls[i % len(urls)]
        user = f"editor{i}"
        token = mint_token(secret, user, ttl=7200, workflows=[cfg.workflow]) if secret else ""
        async with limit:
            if cfg.target == "y-websocket":
                path = f"/{cfg.workflow}"
            else:
                path = f"/rest/crdt/{cfg.workflow}?token={token}"
            request = handshake_request(host, port, path)
            _, doc = await loop.create_connection(
                lambda: YjsEditor(totals, request, i, cfg.editors), host, port
            )
            await asyncio.wait_for(doc.ready, 30)
            await asyncio.wait_for(doc.synced, 30)
            docs[i] = doc
            if cfg.target in PUSH_TARGETS:
                ref = f"ed{i}x{os.getpid()}"
                request = handshake_request(host, port, f"/rest/push?pushRef={ref}&token={token}")
                _, tab = await loop.create_connection(
                    lambda: PushEditor(totals, request, ref, cfg.workflow), host, port
                )
                await asyncio.wait_for(tab.ready, 30)
                push[i] = tab

    await asyncio.gather(*(connect(i) for i in indices))
    observers = cfg.observers or cfg.editors
    for i in indices:
        if i >= observers:
            for client in (docs.get(i), push.get(i)):
                if client is not None:
                    client.sink = True
    gc_pauses = watch_gc(totals)
    emit({"event": "ready", "editors": len(indices)})
    line = await loop.run_in_executor(None, sys.stdin.readline)
    _, t0_wall, warm, measure = line.split()
    t0 = loop.time() + (float(t0_wall) - time.time())
    w0, w1 = t0 + float(warm), t0 + float(warm) + float(measure)
    cpu: dict[str, float] = {}

    def window(on: bool) -> None:
        totals.measuring = on
        cpu["start" if on else "end"] = time.process_time()

    loop.call_at(w0, window, True)
    loop.call_at(w1, window, False)
    cursor_period = 1.0 / cfg.cursor_hz
    edit_period = 1.0 / cfg.edit_hz if cfg.edit_hz > 0 else 0.0
    n = cfg.editors

    async def cursors(i: int) -> None:
        sender: PushEditor | YjsEditor = push[i] if i in push else docs[i]
        due = t0 + (i / n) * cursor_period
        k = 0
        while due < w1:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = loop.time() - due
            x, y = cursor_xy(i, k)
            sender.send_cursor(x, y)
            if totals.measuring:
                totals.cursor_sent += 1
                totals.send_lag.add(int(lag * 1e6))
            k += 1
            due += cursor_period
            if lag > 1.0:  # far behind: skip ahead instead of bursting
                due = loop.time()

    async def edits(i: int) -> None:
        doc = docs[i]
        due = t0 + (i / n) * edit_period + random.random() * 0.01
        while due < w1:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            doc.edit()
            if totals.measuring:
                totals.edit_sent += 1
            due += edit_period

    tasks = [loop.create_task(cursors(i)) for i in indices]
    if edit_period:
        tasks += [loop.create_task(edits(i)) for i in indices]
    await asyncio.gather(*tasks)
    await asyncio.sleep(max(0.0, w1 - loop.time()) + cfg.drain)
    emit(
        {
            "event": "report",
            "first": cfg.first,
            "count": cfg.count,
            "cursor_sent": totals.cursor_sent,
            "cursor_recv": totals.cursor_recv,
            "cursor_own": totals.cursor_own,
            "cursor_frames": totals.cursor_frames,
            "frames": totals.frames,
            "bytes": totals.bytes,
            "edit_sent": totals.edit_sent,
            "edit_recv": totals.edit_recv,
            "cursor_lat": totals.cursor_lat.to_json(),
            "edit_lat": totals.edit_lat.to_json(),
            "send_lag": totals.send_lag.to_json(),
            "cpu_s": round(cpu.get("end", 0.0) - cpu.get("start", 0.0), 3),
            "edits_total": {str(i): docs[i].edit_seq for i in indices},
            "last_seen": {str(i): docs[i].last_seen for i in indices if i < observers},
            "sink_bytes": totals.sink_bytes,
            "cursor_senders_seen": [
                len((push[i] if i in push else docs[i]).senders) for i in indices if i < observers
            ],
            "closed": sum(c.closed for c in [*push.values(), *docs.values()]),
            "gc": gc_pauses,
            "errors": totals.errors,
        }
    )
    for client in [*push.values(), *docs.values()]:
        client.close()
    await asyncio.sleep(0.2)


def watch_gc(totals: Totals) -> dict[str, Any]:
    """Record the generator's garbage-collection pauses in the measured window (a pause of
    the generator would show as latency)."""
    stats: dict[str, Any] = {"collections": 0, "total_ms": 0.0, "max_ms": 0.0}
    started: list[float] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started and totals.measuring:
            ms = (time.perf_counter() - started[0]) * 1000
            stats["collections"] += 1
            stats["total_ms"] = round(stats["total_ms"] + ms, 2)
            stats["max_ms"] = round(max(stats["max_ms"], ms), 2)

    gc.callbacks.append(callback)
    return stats


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- the harness


def redis_up() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


def ensure_yws() -> str | None:
    """Install the y-websocket peer if needed; the reason it cannot run, or None."""
    if YWS_SERVER.exists():
        return None
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not installed"
    cmd = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
    log_("installing the y-websocket peer: " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=YWS_DIR, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not YWS_SERVER.exists():
        return f"npm ci failed: {proc.stderr[-300:]}"
    return None


def log_(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Generator:
    """One generator process (this script with --generator), pinned to the harness's CPU."""

    def __init__(self, argv: list[str], env: dict[str, str], logpath: Path) -> None:
        self.argv = argv
        self.env = env
        self.logpath = logpath
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with open(self.logpath, "wb") as logf:  # noqa: ASYNC230 (tiny, once)
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logf,
                env=self.env,
                limit=64 * 1024 * 1024,  # a report holds histograms: one long line
            )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                with contextlib.suppress(ValueError):
                    await self.lines.put(json.loads(line))
        finally:
            await self.lines.put({"event": "exit"})

    async def wait(self, event: str, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.lines.get()
                if msg["event"] == event:
                    return msg
                if msg["event"] == "exit":
                    tail = self.logpath.read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"generator exited before {event!r}:\n{tail}")

    def send(self, line: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2)


async def one_run(
    target: str, cfg: argparse.Namespace, session: aiohttp.ClientSession, logdir: Path, rep: int
) -> dict[str, Any]:
    servers: list[Server] = []
    gens: list[Generator] = []
    result: dict[str, Any] = {"target": target, "rep": rep}
    secret = ""
    spec: ServerSpec
    if target == "y-websocket":
        node = shutil.which("node") or "node"
        spec = ServerSpec(
            "y-websocket",
            ["env", "HOST=127.0.0.1", "PORT={port}", node, str(YWS_SERVER)],
            "plain",
        )
        nodes = 1
    else:
        spec = livepush_spec("livepush-redis" if target == "livepush-redis" else "livepush")
        if not spec.available:
            raise RuntimeError(spec.reason)
        if target in TICKS:
            spec.env["LIVEPUSH_COLLAB_TICK"] = str(TICKS[target])
        secret = spec.env["LIVEPUSH_JWT_SECRET"]
        db = f"crdt-{target}-{rep}-{os.urandom(3).hex()}.db"
        spec.env["LIVEPUSH_CRDT_PATH"] = str(logdir / db)
        for setting in cfg.server_env:
            name, _, value = setting.partition("=")
            spec.env[name] = value
        nodes = 2 if target == "livepush-redis" else 1
    try:
        for _ in range(nodes):
            server = Server(spec, logdir, cfg.pin)
            await server.start(session)
            servers.append(server)
        urls = ",".join(f"127.0.0.1:{s.port}" for s in servers)
        per = -(-cfg.editors // cfg.gen_procs)
        env = {**os.environ, "LIVEPUSH_BENCH_SECRET": secret}
        for g in range(cfg.gen_procs):
            first, count = g * per, min(per, cfg.editors - g * per)
            if count <= 0:
                break
            argv = [sys.executable, str(SCRIPT), "--generator"]
            argv += ["--target", target, "--urls", urls, "--workflow", cfg.workflow]
            argv += ["--editors", str(cfg.editors), "--first", str(first), "--count", str(count)]
            argv += ["--cursor-hz", str(cfg.cursor_hz), "--edit-hz", str(cfg.edit_hz)]
            argv += ["--drain", str(cfg.drain), "--observers", str(cfg.observers)]
            if cfg.asyncio_loop:
                argv.append("--asyncio-loop")
            if cfg.pin:
                argv = ["taskset", "-c", cfg.gen_cpus or LOADGEN_CPU, *argv]
            gen = Generator(argv, env, logdir / f"gen-{target}-{rep}-{g}-{os.urandom(2).hex()}.log")
            await gen.start()
            gens.append(gen)
        t_connect = time.monotonic()
        for gen in gens:
            await gen.wait("ready", 60)
        result["connect_s"] = round(time.monotonic() - t_connect, 2)
        await asyncio.sleep(0.5)
        for server in servers:
            await quiesce(server)
        t0 = time.time() + 0.3
        for gen in gens:
            gen.send(f"start {t0!r} {cfg.warmup} {cfg.measure}")
        # the measured window, read from here (CPU of every process involved)
        await asyncio.sleep(max(0.0, t0 + cfg.warmup - time.time()))
        watch = CpuWatch([s.pid for s in servers] + [g.pid for g in gens])
        wall0 = time.monotonic()
        srv0 = [s.cpu() for s in servers]
        gen0 = [cpu_seconds(g.pid) for g in gens]
        redis0 = redis_server_cpu()
        await asyncio.sleep(max(0.0, t0 + cfg.warmup + cfg.measure - time.time()))
        srv1 = [s.cpu() for s in servers]
        gen1 = [cpu_seconds(g.pid) for g in gens]
        redis1 = redis_server_cpu()
        elapsed = time.monotonic() - wall0
        usage = watch.stop()
        rss = [s.rss_kb() for s in servers]
        reports = [await gen.wait("report", cfg.drain + 60) for gen in gens]
    finally:
        for gen in gens:
            await gen.stop()
        for server in servers:
            await server.stop()
        if target == "livepush-redis":
            with contextlib.suppress(Exception):
                result["redis_keys_deleted"] = await delete_redis_keys(
                    spec.env["LIVEPUSH_REDIS_PREFIX"]
                )
    result.update(summarize_run(cfg, reports, elapsed))
    result["server_cpu_pct"] = round(100 * (sum(srv1) - sum(srv0)) / elapsed, 1)
    result["server_cpu_pct_each"] = [
        round(100 * (b - a) / elapsed, 1) for a, b in zip(srv0, srv1, strict=True)
    ]
    result["generator_cpu_pct"] = round(100 * (sum(gen1) - sum(gen0)) / elapsed, 1)
    result["generator_cpu_pct_each"] = [
        round(100 * (b - a) / elapsed, 1) for a, b in zip(gen0, gen1, strict=True)
    ]
    result["redis_cpu_pct"] = (
        round(100 * (redis1 - redis0) / elapsed, 1) if target == "livepush-redis" else None
    )
    result["server_rss_mb"] = round(sum(rss) / 1024, 1)
    result["window_s"] = round(elapsed, 2)
    result.update(usage)
    return result


def summarize_run(
    cfg: argparse.Namespace, reports: list[dict[str, Any]], elapsed: float
) -> dict[str, Any]:
    def total(key: str) -> int:
        return sum(r[key] for r in reports)

    window = cfg.measure
    cursor = percentiles(Hist.merge([r["cursor_lat"] for r in reports]))
    edit = percentiles(Hist.merge([r["edit_lat"] for r in reports]))
    lag = percentiles(Hist.merge([r["send_lag"] for r in reports]))
    # canvas completeness: every editor saw every other editor's last edit
    sent = {int(k): v for r in reports for k, v in r["edits_total"].items()}
    missing = 0
    for r in reports:
        for k, seen in r["last_seen"].items():
            for sender, last in sent.items():
                if sender != int(k) and seen[sender] != last:
                    missing += 1
    errors = [e for r in reports for e in r["errors"]]
    n = cfg.editors
    k = cfg.observers or n  # receivers that measure
    # every cursor sent is due at the n - 1 other editors, k of which measure (on average)
    cursor_expected = total("cursor_sent") * k * (n - 1) / n
    edit_expected = total("edit_sent") * k * (n - 1) / n
    return {
        "editors": n,
        "observers": k,
        "cursor_sent_per_s": round(total("cursor_sent") / window),
        "cursor_offered_per_s": round(total("cursor_sent") * (n - 1) / window),
        "cursor_delivered_per_s": round(total("cursor_recv") / window),
        "cursor_delivered_per_receiver_per_s": round(total("cursor_recv") / window / k, 1),
        "cursor_delivered_fraction": round(total("cursor_recv") / max(1, cursor_expected), 3),
        "cursor_frames_per_s": round(total("cursor_frames") / window),
        "frames_per_s": round(total("frames") / window),
        "frames_per_receiver_per_s": round(total("frames") / window / k, 1),
        "sink_mb_per_s": round(total("sink_bytes") / window / 1e6, 2),
        "updates_per_frame": round(total("cursor_recv") / max(1, total("cursor_frames")), 2),
        "recv_mb_per_s": round(total("bytes") / window / 1e6, 2),
        "cursor_own_echoes": total("cursor_own"),
        "cursor_lat": cursor,
        "edit_sent_per_s": round(total("edit_sent") / window, 1),
        "edit_delivered_per_s": round(total("edit_recv") / window),
        "edit_delivered_fraction": round(total("edit_recv") / max(1, edit_expected), 3),
        "edit_lat": edit,
        "edits_total": sum(sent.values()),
        "edits_missing_at_end": missing,
        # the fewest other editors whose cursors one receiver got (n - 1 when all arrive)
        "cursor_senders_seen_min": min(
            (v for r in reports for v in r["cursor_senders_seen"]), default=0
        ),
        "send_lag": lag,
        "generator_cpu_pct_self": round(100 * sum(r["cpu_s"] for r in reports) / elapsed, 1),
        "generator_gc_collections": sum(r["gc"]["collections"] for r in reports),
        "generator_gc_max_ms": max(r["gc"]["max_ms"] for r in reports),
        "generator_gc_total_ms": round(sum(r["gc"]["total_ms"] for r in reports), 1),
        "closed_connections": total("closed"),
        "errors": len(errors),
        "first_errors": errors[:10],
        "complete": missing == 0 and not errors and total("closed") == 0,
        "all_cursors_seen": min((v for r in reports for v in r["cursor_senders_seen"]), default=0)
        == n - 1,
    }


def median(values: list[Any]) -> Any:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


SUMMARY_KEYS = [
    "cursor_sent_per_s",
    "cursor_offered_per_s",
    "cursor_delivered_per_s",
    "cursor_delivered_per_receiver_per_s",
    "cursor_delivered_fraction",
    "frames_per_s",
    "frames_per_receiver_per_s",
    "updates_per_frame",
    "recv_mb_per_s",
    "edit_sent_per_s",
    "edit_delivered_per_s",
    "edit_delivered_fraction",
    "server_cpu_pct",
    "generator_cpu_pct",
    "redis_cpu_pct",
    "other_procs_cpu_pct",
]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": len(runs)}
    for key in SUMMARY_KEYS:
        out[key] = median([r.get(key) for r in runs])
    for lat in ("cursor_lat", "edit_lat", "send_lag"):
        out[lat] = {k: median([r[lat][k] for r in runs]) for k in ("p50_ms", "p99_ms", "max_ms")}
    out["complete"] = all(r["complete"] for r in runs)
    out["per_rep"] = {
        "cursor_delivered_per_s": [r["cursor_delivered_per_s"] for r in runs],
        "cursor_p99_ms": [r["cursor_lat"]["p99_ms"] for r in runs],
        "edit_p99_ms": [r["edit_lat"]["p99_ms"] for r in runs],
        "server_cpu_pct": [r["server_cpu_pct"] for r in runs],
        "generator_cpu_pct": [r["generator_cpu_pct"] for r in runs],
    }
    return out


def fmt(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| target | cursors | cursor updates sent/s | delivered/s (per receiver) | "
        "frames received/s (per receiver) | cursor p50 / p99 ms | canvas edits/s | "
        "canvas deliveries/s | canvas p50 / p99 ms | server CPU | generator CPU | "
        "sender lag p99 ms | complete |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    how = {
        "livepush": "push `ephemeral`, coalesced per 50 ms tick",
        "livepush-redis": "same, 2 nodes on Redis",
        "livepush-tick33": "push `ephemeral`, coalesced per 33 ms tick",
        "livepush-tick10": "push `ephemeral`, coalesced per 10 ms tick",
        "livepush-yjs": "Yjs awareness, per tick",
        "y-websocket": "Yjs awareness, relayed",
    }
    for target, s in results["summary"].items():
        if "error" in s:
            err = str(s["error"])[:160].replace("|", "/").replace("\n", " ")
            lines.append(f"| {target} | failed: {err} ||||||||||||")
            continue
        cpu = f"{fmt(s['server_cpu_pct'])}%"
        if s.get("redis_cpu_pct") is not None:
            cpu += f" (+ redis {fmt(s['redis_cpu_pct'])}%)"
        lines.append(
            f"| {target} | {how.get(target, '')} | {fmt(s['cursor_sent_per_s'])} | "
            f"{fmt(s['cursor_delivered_per_s'])} "
            f"({fmt(s['cursor_delivered_per_receiver_per_s'])}) | "
            f"{fmt(s['frames_per_s'])} ({fmt(s['frames_per_receiver_per_s'])}) | "
            f"{fmt(s['cursor_lat']['p50_ms'], '.1f')} / {fmt(s['cursor_lat']['p99_ms'], '.1f')} | "
            f"{fmt(s['edit_sent_per_s'], '.1f')} | {fmt(s['edit_delivered_per_s'])} | "
            f"{fmt(s['edit_lat']['p50_ms'], '.1f')} / {fmt(s['edit_lat']['p99_ms'], '.1f')} | "
            f"{cpu} | {fmt(s['generator_cpu_pct'])}% | {fmt(s['send_lag']['p99_ms'], '.1f')} | "
            f"{'yes' if s['complete'] else 'NO'} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 6 editors, 2 s, livepush")
    p.add_argument(
        "--targets",
        default=None,
        help=f"comma-separated, from {ALL_TARGETS} (default: the first four; "
        "livepush-redis needs Redis on 127.0.0.1:6379, y-websocket needs node + npm)",
    )
    p.add_argument("--editors", type=int, default=50)
    p.add_argument("--cursor-hz", type=float, default=30.0, help="cursor moves per editor per s")
    p.add_argument("--edit-hz", type=float, default=1.0, help="canvas edits per editor per s")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    p.add_argument("--measure", type=float, default=25.0, help="seconds measured per run")
    p.add_argument("--drain", type=float, default=2.0, help="seconds to wait after sending")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--gen-procs", type=int, default=1, help="generator processes (default 1)")
    p.add_argument("--gen-cpus", default=None, help="CPUs of the generators (default: 1)")
    p.add_argument("--asyncio-loop", action="store_true", help="generators without uvloop")
    p.add_argument(
        "--observers",
        type=int,
        default=0,
        help="editors 0..K-1 parse and measure what they receive; the others only read their "
        "sockets and count bytes (a check of how much the generator's own parsing adds to "
        "the latency; default 0: every editor measures). Those do not answer pings: keep a "
        "run under ~50 s (the default is about 35 s)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="livepush environment, e.g. LIVEPUSH_COLLAB_TICK=0.033 (repeatable)",
    )
    p.add_argument("--workflow", default=WORKFLOW)
    p.add_argument(
        "--max-other-load",
        type=float,
        default=10.0,
        help="repeat a run (at most twice) when other processes used more than this %% of a "
        "core during it",
    )
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument("--max-seconds", type=float, default=1200, help="hard limit for the run")
    # generator process (internal)
    p.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--target", default="livepush", help=argparse.SUPPRESS)
    p.add_argument("--urls", default="", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    if cfg.quick:
        cfg.editors, cfg.warmup, cfg.measure, cfg.reps, cfg.drain = 6, 0.5, 1.5, 1, 0.5
        cfg.edit_hz = 5.0
        cfg.max_other_load = 1e9  # a smoke run is not repeated
        if cfg.targets is None:
            cfg.targets = "livepush,livepush-yjs" + (",livepush-redis" if redis_up() else "")
    return cfg


async def amain(cfg: argparse.Namespace) -> dict[str, Any]:
    logdir = Path(tempfile.mkdtemp(prefix="livepush-bench-collab-"))
    log_(f"server and generator logs in {logdir}")
    machine = machine_info()
    with contextlib.suppress(Exception):
        for name, pkg in (
            ("@y/websocket-server", "@y/websocket-server"),
            ("yjs", "yjs"),
            ("y-websocket-server ws", "ws"),
        ):
            meta = json.loads((YWS_DIR / "node_modules" / pkg / "package.json").read_text())
            machine["versions"][name] = meta["version"]
    # livepush is installed in editable mode: uncommitted changes under src/ are measured too
    status = cmd_output(["git", "-C", str(BENCH.parent), "status", "--short", "--", "src"])
    machine["src_uncommitted"] = status[1].splitlines()
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        machine["versions"]["pycrdt"] = version("pycrdt")
        machine["versions"]["redis-py"] = version("redis")
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "pinning": {"server_cpu": SERVER_CPU, "generator_cpu": cfg.gen_cpus or LOADGEN_CPU}
        if cfg.pin
        else None,
        "runs": [],
        "skipped": {},
        "summary": {},
    }
    targets = [t.strip() for t in (cfg.targets or ",".join(DEFAULT_TARGETS)).split(",")]
    targets = [t for t in targets if t]
    for t in targets:
        if t not in ALL_TARGETS:
            raise SystemExit(f"unknown target {t!r}; choose from {ALL_TARGETS}")
    if "y-websocket" in targets and (reason := ensure_yws()):
        results["skipped"]["y-websocket"] = reason
    if "livepush-redis" in targets and not redis_up():
        results["skipped"]["livepush-redis"] = "no Redis on 127.0.0.1:6379"
    targets = [t for t in targets if t not in results["skipped"]]
    async with aiohttp.ClientSession() as session:
        for rep in range(cfg.reps):  # round-robin over the targets (as bench/run.py)
            for target in targets:
                for attempt in range(3):
                    try:
                        run = await one_run(target, cfg, session, logdir, rep)
                        log_(f"{target} #{rep + 1}: {describe(run)}")
                    except Exception as exc:  # recorded, the run goes on
                        log_(f"{target} #{rep + 1}: FAILED: {exc!r}")
                        run = {"target": target, "rep": rep, "error": repr(exc)}
                    run["attempt"] = attempt + 1
                    run["disturbed"] = run.get("other_procs_cpu_pct", 0) > cfg.max_other_load
                    if not run["disturbed"]:
                        break
                    log_(f"  other processes used {run['other_procs_cpu_pct']}% CPU; repeating")
                    await asyncio.sleep(2)
                results["runs"].append(run)
    for target in targets:
        runs = [r for r in results["runs"] if r["target"] == target]
        good = [r for r in runs if "error" not in r]
        if not good:
            results["summary"][target] = {"error": runs[-1].get("error") if runs else "no run"}
            continue
        results["summary"][target] = summarize(good)
        results["summary"][target]["complete"] &= len(good) == len(runs)
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["logdir"] = str(logdir)
    return results


def describe(r: dict[str, Any]) -> str:
    return (
        f"cursors {r['cursor_sent_per_s']:,}/s sent, {r['cursor_delivered_per_s']:,}/s "
        f"delivered ({r['cursor_delivered_fraction']:.3f} of expected), "
        f"{r['frames_per_s']:,} frames/s, p50 {r['cursor_lat']['p50_ms']} p99 "
        f"{r['cursor_lat']['p99_ms']} ms; canvas {r['edit_sent_per_s']}/s -> "
        f"{r['edit_delivered_per_s']:,}/s, p50 {r['edit_lat']['p50_ms']} p99 "
        f"{r['edit_lat']['p99_ms']} ms, missing {r['edits_missing_at_end']}; server CPU "
        f"{r['server_cpu_pct']}% {r['server_cpu_pct_each']}, generator {r['generator_cpu_pct']}%"
        f", redis {r['redis_cpu_pct']}%, sender lag p99 {r['send_lag']['p99_ms']} ms, "
        f"generator GC max {r['generator_gc_max_ms']} ms, other "
        f"{r['other_procs_cpu_pct']}%, complete {r['complete']}"
        + ("" if r["complete"] else f" {r['first_errors'][:3]}")
    )


def main() -> int:
    cfg = parse_args()
    loop_factory = None
    if not cfg.asyncio_loop:
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    if cfg.generator:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(generator(cfg))
        return 0
    raise_nofile()
    if cfg.pin:
        if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
            log_("fewer than 2 CPUs or no taskset: not pinning")
            cfg.pin = False
        else:
            os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    t0 = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results = runner.run(asyncio.wait_for(amain(cfg), cfg.max_seconds))
    except TimeoutError:
        log_(f"run exceeded --max-seconds={cfg.max_seconds}; aborted")
        return 2
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    results["markdown"] = markdown(results)
    RESULTS.mkdir(exist_ok=True)
    out = cfg.out or RESULTS / (
        dt.date.today().isoformat() + "-collab" + ("-quick" if cfg.quick else "") + ".json"
    )
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(results["markdown"])
    print(f"\nresults: {out} (elapsed {results['elapsed_s']} s)")
    failed = [r for r in results["runs"] if "error" in r or not r.get("complete")]
    for r in failed:
        print(f"FAILED: {r['target']} #{r['rep'] + 1}: {r.get('error') or r['first_errors']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
