#!/usr/bin/env python3
"""Concurrent executions benchmark (issue 4): many n8n executions at once, each streamed to
the watchers of its workflow.

    python bench/executions.py           # full run: 10 workflows x 200 watchers (2,000
                                         # WebSocket connections), 20 executions per workflow
                                         # (200 at once) of 20 nodes with 1 KB outputs; the
                                         # memory engine, then the Redis engine; 3 repetitions
    python bench/executions.py --quick   # smoke run: seconds

One run: start `livepush serve` (pinned to CPU 0, as in bench/run.py), connect the watchers
(each subscribed to `workflow:<id>` with the `channels` query parameter; it follows every
execution of the workflow through the server's `executionStream` notice), then run every
execution at once through the HTTP API with `livepush.demo.executions` (the engine behind
`livepush demo`, no delays, no errors, waits or sub-workflows: 62 events per execution) with
`sentAtNs` in every event's data. The watchers (a minimal RFC 6455 client on asyncio
protocols, so that the client side costs little per message) and the publisher share this
process, pinned to CPU 1.

Measured: delivered events/s (every publication on an `execution:*` channel received by every
watcher, from the first publish to the last receive), latency (receive time - `sentAtNs`, the
publisher's clock just before the HTTP request, over every delivery), server CPU (and
redis-server's), and completeness: each watcher must get every event of every execution of
its workflow, offsets 1..N with no gap or duplicate, after the execution's notice, and the
server's `unsubscribed` (execution_finished) for each. Any loss fails the run (exit status 1).

Flow control: the publisher never lets the deliveries it has caused run more than `--window`
events per watcher ahead of what the watchers received (the server bounds each connection's
queue at 1,000 messages and drops slower consumers).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import struct
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from livepush.auth.tokens import mint_token
from livepush.demo.executions import DemoOptions, DemoReport, parse_range, run_demo
from livepush.publisher import HttpPublisher
from run import (
    LOADGEN_CPU,
    RESULTS,
    ROOT,
    SERVER_CPU,
    CpuWatch,
    Server,
    livepush_spec,
    log,
    machine_info,
    quiesce,
    raise_nofile,
)

# --------------------------------------------------------------------------- the watchers


class _Data(msgspec.Struct):
    executionId: str | None = None
    channel: str | None = None
    code: str | None = None
    sentAtNs: int | None = None


class _Message(msgspec.Struct):
    type: str
    channel: str | None = None
    offset: int | None = None
    data: _Data | None = None


_decode = msgspec.json.Decoder(_Message).decode


class Totals:
    """What all watchers received (shared, so the publisher's gate reads one number)."""

    def __init__(self) -> None:
        self.events = 0  # publications on execution:* channels
        self.notices = 0
        self.unsubscribed = 0
        self.errors: list[str] = []
        self.latencies_us = array("q")
        #: when each of those was sent, ms after `start_ns`
        self.sent_ms = array("q")
        self.start_ns = time.time_ns()
        #: the slowest delivery: (latency in µs, type, channel, offset)
        self.worst: tuple[int, str, str, int] = (0, "", "", 0)
        self.first_recv = 0.0
        self.last_recv = 0.0
        self.progress = asyncio.Event()


class Watcher(asyncio.Protocol):
    """One WebSocket connection following a workflow's executions."""

    def __init__(self, totals: Totals, request: bytes) -> None:
        self.totals = totals
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        #: execution channel -> last offset received
        self.offsets: dict[str, int] = {}
        self.noticed: set[str] = set()
        self.finished: set[str] = set()
        self.events = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during the handshake: {exc!r}"))
        elif self.upgraded:
            self.totals.errors.append(f"connection lost: {exc!r}")

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(head.decode(errors="replace")[:300]))
                return
            self.upgraded = True
            self.ready.set_result(None)
        now = time.time_ns()
        totals = self.totals
        pos, size = 0, len(buf)
        before = totals.events
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if size - pos < head + length:
                break
            opcode = b0 & 0x0F
            start = pos + head
            pos = start + length
            if opcode == 1:
                self.message(memoryview(buf)[start:pos], now)
            elif opcode == 9:  # ping: pong with the same payload, masked
                self.send(0xA, bytes(buf[start:pos]))
            elif opcode == 8:
                totals.errors.append(f"closed by the server: {bytes(buf[start:pos])[:200]!r}")
            elif opcode != 0xA:
                totals.errors.append(f"unexpected opcode {opcode}")
        del buf[:pos]
        if totals.events != before:
            if not totals.first_recv:
                totals.first_recv = time.monotonic()
            totals.last_recv = time.monotonic()
            totals.progress.set()

    def message(self, raw: memoryview, now: int) -> None:
        message = _decode(raw)
        totals = self.totals
        channel = message.channel
        if message.offset is not None and channel is not None and channel[:10] == "execution:":
            expected = self.offsets.get(channel, 0) + 1
            if message.offset != expected:
                totals.errors.append(f"{channel}: offset {message.offset}, expected {expected}")
            if channel not in self.noticed:
                totals.errors.append(f"{channel}: event before its executionStream notice")
            self.offsets[channel] = message.offset
            self.events += 1
            totals.events += 1
            data = message.data
            if data is not None and data.sentAtNs is not None:
                latency = (now - data.sentAtNs) // 1000
                totals.latencies_us.append(latency)
                totals.sent_ms.append((data.sentAtNs - totals.start_ns) // 1_000_000)
                if latency > totals.worst[0]:
                    totals.worst = (latency, message.type, channel, message.offset)
        elif message.type == "executionStream":
            assert message.data is not None
            assert message.data.channel is not None
            if message.data.channel in self.noticed:
                totals.errors.append(f"{message.data.channel}: second notice")
            self.noticed.add(message.data.channel)
            totals.notices += 1
        elif message.type == "unsubscribed":
            assert message.data is not None
            if message.data.code == "execution_finished" and message.data.channel:
                self.finished.add(message.data.channel)
                totals.unsubscribed += 1
            else:
                totals.errors.append(f"unsubscribed: {bytes(raw)[:300]!r}")
        elif message.type == "error":
            totals.errors.append(f"error message: {bytes(raw)[:300]!r}")

    def send(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            with contextlib.suppress(Exception):
                self.send(0x8, struct.pack("!H", 1000))
            self.transport.close()


def handshake(port: int, push_ref: str, token: str, channels: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /rest/push?pushRef={push_ref}&token={token}&channels={channels} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def connect_watchers(
    port: int, token: str, workflows: list[str], per_workflow: int, totals: Totals
) -> dict[str, list[Watcher]]:
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(100)  # handshakes in flight (as the loadgen)
    out: dict[str, list[Watcher]] = {w: [] for w in workflows}

    async def one(workflow: str, index: int) -> None:
        request = handshake(port, f"w-{workflow}-{index}", token, f"workflow:{workflow}")
        async with limit:
            _, watcher = await loop.create_connection(
                lambda: Watcher(totals, request), "127.0.0.1", port
            )
            await asyncio.wait_for(watcher.ready, 30)
        out[workflow].append(watcher)

    await asyncio.gather(
        *(one(w, i) for w in workflows for i in range(per_workflow)), return_exceptions=False
    )
    return out


# --------------------------------------------------------------------------- one run


def percentile(sorted_values: array[int], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index] / 1000


def redis_server_cpu() -> float:
    """CPU seconds of every redis-server process on the machine (0 if none)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{name}/comm") as f:
                if f.read().strip() != "redis-server":
                    continue
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
    return total / tick


async def delete_redis_keys(prefix: str) -> int:
    """Remove what a run left in Redis (its own key prefix)."""
    import redis.asyncio as aioredis

    url = os.environ.get("LIVEPUSH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = aioredis.from_url(url)
    deleted = 0
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            deleted += await client.unlink(*keys[i : i + 500])
    finally:
        await client.aclose()
    return deleted


async def phase(
    name: str,
    server: Server,
    api_key: str,
    watchers: dict[str, list[Watcher]],
    cfg: argparse.Namespace,
    rep: int,
    delay_ms: tuple[float, float],
    window: int | None,
) -> dict[str, Any]:
    """Run every execution once, all at once, and check what each watcher received.
    `window`: flow control (events per watcher the publisher may run ahead; None: open loop,
    paced by the node delays)."""
    totals = Totals()
    for group in watchers.values():
        for watcher in group:
            watcher.totals = totals
    workflows = list(watchers)
    per_event = cfg.watchers  # deliveries caused by one published event
    published = 0
    limit = (window or 0) * cfg.workflows * cfg.watchers

    async def gate() -> None:
        nonlocal published
        while published * per_event - totals.events > limit:
            totals.progress.clear()
            await totals.progress.wait()
        published += 1

    run_id = os.urandom(3).hex()
    reports: dict[str, DemoReport] = {}
    totals.start_ns = time.time_ns()
    watch = CpuWatch([server.pid])
    cpu0, redis0, harness0 = server.cpu(), redis_server_cpu(), time.process_time()
    start = time.monotonic()
    async with HttpPublisher(server.base, api_key, timeout=120) as publisher:

        async def workflow_run(workflow: str) -> None:
            options = DemoOptions(
                url=server.base,
                api_key=api_key,
                push_ref=f"starter-{workflow}",
                workflow_id=workflow,
                nodes=cfg.nodes,
                executions=cfg.executions,
                item_bytes=cfg.item_bytes,
                delay_ms=delay_ms,
                error_rate=0.0,
                wait_rate=0.0,
                subworkflow_rate=0.0,
                concurrency=cfg.concurrency,
                seed=rep,
                execution_prefix=f"x{run_id}-{workflow}-",
                stamp=True,
            )
            reports[workflow] = await run_demo(
                options, publisher=publisher, gate=gate if window is not None else None
            )

        await asyncio.gather(*(workflow_run(w) for w in workflows))
    published_s = time.monotonic() - start
    events_published = sum(r.events for r in reports.values())
    expected = events_published * cfg.watchers
    deadline = time.monotonic() + cfg.drain_seconds
    while totals.events < expected and time.monotonic() < deadline:
        totals.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(totals.progress.wait(), 1.0)
    end = totals.last_recv or time.monotonic()
    cpu1, redis1, harness1 = server.cpu(), redis_server_cpu(), time.process_time()
    usage = watch.stop()
    # the unsubscribed notices follow the last event
    await asyncio.sleep(0.5)
    elapsed = end - start
    # completeness, per watcher and execution
    missing = 0
    incomplete_watchers = 0
    for workflow, report in reports.items():
        counts = report.events_per_execution
        for watcher in watchers[workflow]:
            short = 0
            for execution_id, count in counts.items():
                channel = f"execution:{execution_id}"
                got = watcher.offsets.get(channel, 0)
                if got != count or channel not in watcher.finished:
                    short += max(0, count - got) or 1
            missing += short
            incomplete_watchers += bool(short)
    lat = array("q", sorted(totals.latencies_us))
    # without the start burst: every execution starts at the same instant, so the first
    # events of all 200 arrive together (and every watcher starts following them)
    steady = array(
        "q",
        sorted(
            v
            for v, sent in zip(totals.latencies_us, totals.sent_ms, strict=True)
            if sent >= cfg.steady_after * 1000
        ),
    )
    result: dict[str, Any] = {
        "phase": name,
        "delay_ms": list(delay_ms),
        "window": window,
        "executions": sum(r.executions for r in reports.values()),
        "events_published": events_published,
        "bytes_published": sum(r.bytes for r in reports.values()),
        "deliveries_expected": expected,
        "deliveries": totals.events,
        "notices": totals.notices,
        "unsubscribed": totals.unsubscribed,
        "missing": missing,
        "incomplete_watchers": incomplete_watchers,
        "errors": len(totals.errors),
        "first_errors": totals.errors[:10],
        "publish_s": round(published_s, 3),
        "window_s": round(elapsed, 3),
        "delivered_events_per_s": round(totals.events / elapsed) if elapsed > 0 else None,
        "published_events_per_s": round(events_published / published_s),
        "lat_p50_ms": percentile(lat, 0.50),
        "lat_p90_ms": percentile(lat, 0.90),
        "lat_p99_ms": percentile(lat, 0.99),
        "lat_max_ms": lat[-1] / 1000 if lat else None,
        "lat_samples": len(lat),
        "steady_after_s": cfg.steady_after,
        "steady_samples": len(steady),
        "steady_p50_ms": percentile(steady, 0.50),
        "steady_p99_ms": percentile(steady, 0.99),
        "steady_max_ms": steady[-1] / 1000 if steady else None,
        "lat_worst": totals.worst,
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "redis_cpu_pct": round(100 * (redis1 - redis0) / elapsed, 1),
        "harness_cpu_pct": round(100 * (harness1 - harness0) / elapsed, 1),
        "server_rss_mb": round(server.rss_kb() / 1024, 1),
        **usage,
    }
    result["complete"] = missing == 0 and not totals.errors and totals.events == expected
    return result


async def one_run(
    engine: str, cfg: argparse.Namespace, session: aiohttp.ClientSession, logdir: Path, rep: int
) -> dict[str, Any]:
    """A fresh server and watchers; the saturation phase, then the latency phase."""
    spec = livepush_spec("livepush-redis" if engine == "redis" else "livepush")
    if not spec.available:
        raise RuntimeError(spec.reason)
    # 2,000 connections of one user, each following up to 20 executions at once
    spec.env["LIVEPUSH_MAX_SUBSCRIPTIONS"] = "256"
    for setting in cfg.server_env:
        name, _, value = setting.partition("=")
        spec.env[name] = value
    server = Server(spec, logdir, cfg.pin)
    await server.start(session)
    workflows = [f"bench{k}" for k in range(cfg.workflows)]
    token = mint_token(spec.env["LIVEPUSH_JWT_SECRET"], "bench", ttl=3600, workflows=workflows)
    watchers: dict[str, list[Watcher]] = {}
    result: dict[str, Any] = {"engine": engine, "rep": rep}
    api_key = spec.env["LIVEPUSH_API_KEY"]
    try:
        t0 = time.monotonic()
        watchers = await connect_watchers(server.port, token, workflows, cfg.watchers, Totals())
        result["connect_s"] = round(time.monotonic() - t0, 2)
        result["connected"] = sum(len(w) for w in watchers.values())
        await asyncio.sleep(0.5)
        await quiesce(server)
        sat = await phase("saturation", server, api_key, watchers, cfg, rep, (0.0, 0.0), cfg.window)
        result["saturation"] = sat
        log(f"{engine} #{rep + 1} saturation: {describe(sat)}")
        if not cfg.skip_latency and sat["complete"]:
            await quiesce(server)
            delay = parse_range(cfg.lat_delay_ms)
            lat = await phase("latency", server, api_key, watchers, cfg, rep, delay, None)
            result["latency"] = lat
            log(f"{engine} #{rep + 1} latency: {describe(lat)}")
        phases = [result[k] for k in ("saturation", "latency") if k in result]
        result["other_procs_cpu_pct"] = max(p["other_procs_cpu_pct"] for p in phases)
        result["complete"] = all(p["complete"] for p in phases)
        return result
    finally:
        for group in watchers.values():
            for watcher in group:
                watcher.close()
        await server.stop()
        if engine == "redis":
            with contextlib.suppress(Exception):
                result["redis_keys_deleted"] = await delete_redis_keys(
                    spec.env["LIVEPUSH_REDIS_PREFIX"]
                )


def describe(p: dict[str, Any]) -> str:
    return (
        f"{p['delivered_events_per_s']:,} events/s delivered ({p['deliveries']:,} of "
        f"{p['deliveries_expected']:,}), published {p['published_events_per_s']:,}/s, p50 "
        f"{p['lat_p50_ms']} ms, p99 {p['lat_p99_ms']} ms (after the start: p99 "
        f"{p['steady_p99_ms']} ms), server CPU {p['server_cpu_pct']}%, "
        f"redis {p['redis_cpu_pct']}%, harness {p['harness_cpu_pct']}%, complete: "
        f"{p['complete']}" + ("" if p["complete"] else f" {p['first_errors'][:3]}")
    )


def median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        "| engine | watchers | executions at once | events published | deliveries | "
        "saturation: delivered events/s | server CPU | harness CPU | latency phase: offered "
        "deliveries/s | p50 ms | p99 ms | max ms | p99 ms after the start | server CPU | "
        "complete |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for engine, s in results["summary"].items():
        if "error" in s:
            err = str(s["error"])[:160].replace("|", "/")
            lines.append(f"| {engine} | failed: {err} ||||||||||||||")
            continue
        sat, lat = s["saturation"], s.get("latency") or {}
        at_once = cfg["workflows"] * (cfg["concurrency"] or cfg["executions"])
        lines.append(
            f"| {engine} | {cfg['workflows'] * cfg['watchers']:,} | {at_once} | "
            f"{sat['events_published']:,} | {sat['deliveries']:,} | "
            f"{sat['delivered_events_per_s']:,.0f} | {sat['server_cpu_pct']:.0f}% | "
            f"{sat['harness_cpu_pct']:.0f}% | {fmt(lat.get('offered_deliveries_per_s'))} | "
            f"{fmt(lat.get('lat_p50_ms'), '.1f')} | {fmt(lat.get('lat_p99_ms'), '.1f')} | "
            f"{fmt(lat.get('lat_max_ms'), '.1f')} | {fmt(lat.get('steady_p99_ms'), '.1f')} | "
            f"{fmt(lat.get('server_cpu_pct'), '.0f')}% | "
            f"{s['complete']} |"
        )
    return "\n".join(lines)


def fmt(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def summarize(runs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """Median over the repetitions of one phase."""
    phases = [r[name] for r in runs if name in r]
    if not phases:
        return None
    out: dict[str, Any] = {"reps": len(phases)}
    for key in (
        "executions",
        "events_published",
        "deliveries",
        "delivered_events_per_s",
        "published_events_per_s",
        "lat_p50_ms",
        "lat_p99_ms",
        "lat_max_ms",
        "steady_p50_ms",
        "steady_p99_ms",
        "steady_max_ms",
        "server_cpu_pct",
        "redis_cpu_pct",
        "harness_cpu_pct",
    ):
        out[key] = median([p[key] for p in phases])
    # what the publisher offered: every published event times its watchers, per second
    out["offered_deliveries_per_s"] = median(
        [p["deliveries_expected"] / p["publish_s"] for p in phases]
    )
    out["complete"] = all(p["complete"] for p in phases)
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 x 20 watchers, seconds")
    p.add_argument("--engines", default="memory,redis")
    p.add_argument("--workflows", type=int, default=10)
    p.add_argument("--watchers", type=int, default=200, help="watchers per workflow")
    p.add_argument("--executions", type=int, default=20, help="executions per workflow")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="executions running at once per workflow (default: all of them)",
    )
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--item-bytes", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--window",
        type=int,
        default=200,
        help="events per watcher the publisher may run ahead of the watchers (default 200)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the server, e.g. LIVEPUSH_PRESENCE=false (repeatable)",
    )
    p.add_argument(
        "--max-other-load",
        type=float,
        default=10.0,
        help="repeat a run (at most twice) when other processes used more than this %% of a "
        "core during it (as bench/run.py)",
    )
    p.add_argument(
        "--lat-delay-ms",
        default="1000-2000",
        help="latency phase: how long each node runs, MIN-MAX ms (default 1000-2000: the "
        "executions take about 30 s and offer about 40%% of what the memory engine "
        "delivers at saturation here)",
    )
    p.add_argument(
        "--steady-after",
        type=float,
        default=3.0,
        help="also report latency over the events sent this many seconds after a phase "
        "started (after the burst of 200 simultaneous starts; default 3)",
    )
    p.add_argument("--skip-latency", action="store_true", help="saturation phase only")
    p.add_argument("--drain-seconds", type=float, default=30.0)
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument("--max-seconds", type=float, default=540, help="hard limit for the run")
    cfg = p.parse_args()
    if cfg.quick:
        cfg.workflows, cfg.watchers, cfg.executions, cfg.nodes, cfg.reps = 2, 20, 3, 5, 1
        cfg.lat_delay_ms = "10-30"
        cfg.steady_after = 0.05
        cfg.max_other_load = 1e9  # a smoke run is not repeated
    return cfg


async def amain(cfg: argparse.Namespace) -> dict[str, Any]:
    logdir = Path(tempfile.mkdtemp(prefix="livepush-bench-exec-"))
    log(f"server logs in {logdir}")
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "pinning": {"server_cpu": SERVER_CPU, "harness_cpu": LOADGEN_CPU} if cfg.pin else None,
        "runs": [],
        "summary": {},
    }
    engines = [e.strip() for e in cfg.engines.split(",") if e.strip()]
    async with aiohttp.ClientSession() as session:
        for rep in range(cfg.reps):  # round-robin over the engines, as bench/run.py
            for engine in engines:
                for attempt in range(3):
                    try:
                        run = await one_run(engine, cfg, session, logdir, rep)
                    except Exception as exc:  # recorded, the run goes on
                        log(f"{engine} #{rep + 1}: FAILED: {exc!r}")
                        run = {"engine": engine, "rep": rep, "error": repr(exc)}
                    run["attempt"] = attempt + 1
                    run["disturbed"] = run.get("other_procs_cpu_pct", 0) > cfg.max_other_load
                    if not run["disturbed"]:
                        break
                    log(
                        f"  {engine} #{rep + 1}: other processes used "
                        f"{run['other_procs_cpu_pct']}% CPU; repeating"
                    )
                    await asyncio.sleep(2)
                results["runs"].append(run)
    for engine in engines:
        runs = [r for r in results["runs"] if r["engine"] == engine]
        good = [r for r in runs if "error" not in r]
        if not good:
            results["summary"][engine] = {"error": runs[-1].get("error") if runs else "no run"}
            continue
        results["summary"][engine] = {
            "saturation": summarize(good, "saturation"),
            "latency": summarize(good, "latency"),
            "complete": len(good) == len(runs) and all(r["complete"] for r in good),
        }
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["logdir"] = str(logdir)
    return results


def main() -> int:
    cfg = parse_args()
    raise_nofile()
    if cfg.pin:
        if (os.cpu_count() or 1) < 2:
            log("fewer than 2 CPUs: disabling pinning")
            cfg.pin = False
        else:
            os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    t0 = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results = runner.run(asyncio.wait_for(amain(cfg), cfg.max_seconds))
    except TimeoutError:
        log(f"run exceeded --max-seconds={cfg.max_seconds}; aborted")
        return 2
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    results["markdown"] = markdown(results)
    RESULTS.mkdir(exist_ok=True)
    out = cfg.out or RESULTS / (
        dt.date.today().isoformat() + "-executions" + ("-quick" if cfg.quick else "") + ".json"
    )
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(results["markdown"])
    print(f"\nresults: {out} (elapsed {results['elapsed_s']} s; repo {ROOT})")
    failed = [r for r in results["runs"] if "error" in r or not r.get("complete")]
    for r in failed:
        errors = r.get("error") or [
            r[k]["first_errors"] for k in ("saturation", "latency") if k in r
        ]
        print(f"FAILED: {r['engine']} #{r['rep'] + 1}: {errors}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
