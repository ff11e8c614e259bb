#!/usr/bin/env python3
"""Fan-out and idle-memory benchmark harness for livepush and its peers.

    python bench/run.py                  # full run (~5-8 min): 1,000 and 5,000 subscribers,
                                         # 10,000 idle connections, 3 repetitions each
    python bench/run.py --quick          # smoke run: a few hundred connections, seconds
    python bench/run.py --servers node-ws,aiohttp-bare --sizes 1000

Servers (each pinned to CPU 0 with ``taskset -c 0``):
  livepush       ``livepush serve`` from this checkout (skipped with a reason if not runnable)
  node-ws        bench/peers/node-ws/server.js (npm ``ws``)
  socketio       bench/peers/socketio_server.py (python-socketio AsyncServer on aiohttp)
  aiohttp-bare   bench/peers/aiohttp_bare.py (one pre-built frame, transport.write per socket)

The C load generator (bench/loadgen/loadgen.c, built on demand) is pinned to CPU 1, as is this
harness (publisher).  See bench/README.md for what every number means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN_SRC = BENCH / "loadgen" / "loadgen.c"
LOADGEN_BIN = BENCH / "loadgen" / "build" / "loadgen"
BLASTER_SRC = BENCH / "loadgen" / "blaster.c"
BLASTER_BIN = BENCH / "loadgen" / "build" / "blaster"
NODE_DIR = BENCH / "peers" / "node-ws"
PEERS = BENCH / "peers"
RESULTS = BENCH / "results"
SERVER_CPU = "0"
LOADGEN_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_SERVERS = ["node-ws", "livepush", "socketio", "aiohttp-bare"]
CHANNEL = "workflow:bench"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup helpers


def ensure_loadgen() -> None:
    """Compile the C load generator and the calibration blaster if missing or stale."""
    for src, binary in ((LOADGEN_SRC, LOADGEN_BIN), (BLASTER_SRC, BLASTER_BIN)):
        if binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime:
            continue
        binary.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["gcc", "-O2", "-Wall", "-o", str(binary), str(src)]
        log("building: " + " ".join(cmd))
        subprocess.run(cmd, check=True, timeout=120)


def ensure_node_modules() -> None:
    if (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        return
    cmd = ["npm", "ci", "--no-audit", "--no-fund"]
    if not (NODE_DIR / "package-lock.json").exists():
        cmd[1] = "install"
    log(f"installing node-ws peer dependencies: {' '.join(cmd)}")
    subprocess.run(cmd, cwd=NODE_DIR, check=True, timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if hard == resource.RLIM_INFINITY:
        want = 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def proc_tree(pid: int) -> list[int]:
    """pid and all of its descendants (via /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def core_jiffies() -> dict[str, tuple[int, int, int]]:
    """Per-core (busy, total, steal) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                idle = v[3] + v[4]
                out[name[3:]] = (sum(v) - idle, sum(v), v[7])
    return out


def core_usage(a: dict[str, tuple[int, int, int]], b: dict[str, tuple[int, int, int]]) -> dict:
    """Busy and steal percentage of every core between two core_jiffies() snapshots."""
    res = {}
    for k in b:
        if k in a and b[k][1] > a[k][1]:
            tot = b[k][1] - a[k][1]
            res[k] = {
                "busy_pct": round(100 * (b[k][0] - a[k][0]) / tot, 1),
                "steal_pct": round(100 * (b[k][2] - a[k][2]) / tot, 1),
            }
    return res


def task_jiffies() -> dict[int, tuple[int, bool]]:
    """utime+stime of every process on the machine, and whether it is a kernel thread."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{name}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            kthread = bool(int(fields[6]) & 0x00200000) or fields[1] == "2"  # PF_KTHREAD
            out[int(name)] = (int(fields[11]) + int(fields[12]), kthread)
    return out


class CpuWatch:
    """Per-core busy time, and CPU used by every process but this harness and the server and
    loadgen being measured (idle contenders count as "other"), over one phase: detects other
    jobs on the machine."""

    def __init__(self, ours: list[int]) -> None:
        self.ours = {os.getpid()}
        for pid in ours:
            self.ours.update(proc_tree(pid))
        self.t0 = time.monotonic()
        self.tasks0 = task_jiffies()
        self.cores0 = core_jiffies()

    def stop(self) -> dict[str, Any]:
        dt_s = time.monotonic() - self.t0
        other = kernel = 0
        for pid, (v, kthread) in task_jiffies().items():
            if pid in self.ours:
                continue
            used = max(0, v - self.tasks0.get(pid, (0, False))[0])
            if kthread:  # ksoftirqd, kworkers: mostly network work done for our processes
                kernel += used
            else:
                other += used
        return {
            "cores": core_usage(self.cores0, core_jiffies()),
            "other_procs_cpu_pct": round(100 * other / CLK_TCK / dt_s, 1),
            "kernel_threads_cpu_pct": round(100 * kernel / CLK_TCK / dt_s, 1),
        }


async def retry_if_disturbed(
    label: str, cfg: argparse.Namespace, run: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run a measurement; repeat it (at most twice) if other processes used the CPU."""
    for attempt in range(3):
        r = await run()
        r["attempt"] = attempt + 1
        r["disturbed"] = r["other_procs_cpu_pct"] > cfg.max_other_load
        if not r["disturbed"]:
            break
        log(f"  {label}: other processes used {r['other_procs_cpu_pct']}% CPU; repeating")
        await asyncio.sleep(2)
    return r


def rss_kb(pid: int) -> int:
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def open_log(path: Path, mode: str) -> Any:
    """Log file handed to a child process (synchronous open on purpose: it is tiny)."""
    return open(path, mode)


def cmd_output(cmd: list[str], timeout: float = 20, **kw: Any) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)
    return p.returncode, (p.stdout + p.stderr).strip()


# --------------------------------------------------------------------------- server specs


@dataclass
class ServerSpec:
    name: str
    argv: list[str]  # "{port}" is substituted
    mode: str  # loadgen protocol mode
    env: dict[str, str] = field(default_factory=dict)
    token: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into every published message
    # Every server gets the same handshake headers, a browser's: Origin included.
    origin: bool = True
    available: bool = True
    reason: str = ""
    #: CPUs the server is pinned to (`--workers 2` gets both; the loadgen stays on CPU 1)
    cpus: str = SERVER_CPU


def livepush_spec(name: str = "livepush") -> ServerSpec:
    """livepush on the memory engine; `livepush-redis` on the Redis engine (the local Redis,
    LIVEPUSH_BENCH_REDIS_URL to change it); `livepush-redis-w2` with `--workers 2`."""
    secret = os.urandom(32).hex()
    api_key = "bench-key-" + os.urandom(16).hex()
    argv = ["livepush", "serve", "--host", "127.0.0.1", "--port", "{port}"]
    # the load generator opens thousands of connections from one address at once, which the
    # per-address handshake rate (a protection against one host, docs/security.md) would
    # spread over minutes: it is off here (the connection cap stays on)
    env: dict[str, str] = {"LIVEPUSH_HANDSHAKE_RATE": "0"}
    cpus = SERVER_CPU
    if name.startswith("livepush-redis"):
        argv += ["--engine", "redis"]
        env["LIVEPUSH_REDIS_URL"] = os.environ.get(
            "LIVEPUSH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"
        )
        env["LIVEPUSH_REDIS_PREFIX"] = "bench-" + os.urandom(4).hex()
    if name.endswith("-p1") or name.endswith("-p2"):  # LIVEPUSH_FLUSH_PASSES experiments
        env["LIVEPUSH_FLUSH_PASSES"] = name[-1]
    if name.endswith("-w2"):
        argv += ["--workers", "2"]
        cpus = f"{SERVER_CPU},{LOADGEN_CPU}"
    spec = ServerSpec(
        name=name,
        argv=argv,
        cpus=cpus,
        mode="livepush",
        env={
            **env,
            "LIVEPUSH_JWT_SECRET": secret,
            "LIVEPUSH_API_KEY": api_key,
            # every benchmark connection uses the one user "bench" (default cap: 100 per user)
            "LIVEPUSH_MAX_CONNECTIONS_PER_USER": "1000000",
            # peers log nothing per connection either
            "LIVEPUSH_LOG_LEVEL": "warning",
        },
        headers={"Authorization": f"Bearer {api_key}"},
        extra={"channel": CHANNEL},
    )
    exe = shutil.which("livepush")
    if exe is None:
        spec.available, spec.reason = False, "`livepush` not on PATH"
        return spec
    rc, out = cmd_output(["livepush", "--help"])
    if rc != 0:
        spec.available, spec.reason = False, f"`livepush --help` failed: {out[-300:]}"
        return spec
    rc, out = cmd_output(
        ["livepush", "token", "--user", "bench", "--workflows", "bench", "--secret", secret]
    )
    token = out.strip().splitlines()[-1].strip() if out.strip() else ""
    if rc != 0 or token.count(".") != 2:
        spec.available, spec.reason = False, f"`livepush token` failed: {out[-300:]}"
        return spec
    spec.token = token
    return spec


def build_specs(names: list[str]) -> dict[str, ServerSpec]:
    py = sys.executable
    specs: dict[str, ServerSpec] = {}
    for name in names:
        if name.startswith("livepush"):
            specs[name] = livepush_spec(name)
        elif name == "node-ws":
            node = shutil.which("node") or "node"
            specs[name] = ServerSpec(
                name, [node, "--expose-gc", str(NODE_DIR / "server.js"), "{port}"], "plain"
            )
        elif name == "socketio":
            specs[name] = ServerSpec(
                name, [py, str(PEERS / "socketio_server.py"), "{port}"], "socketio"
            )
        elif name == "aiohttp-bare":
            specs[name] = ServerSpec(name, [py, str(PEERS / "aiohttp_bare.py"), "{port}"], "plain")
        else:
            raise SystemExit(f"unknown server {name!r}; choose from {ALL_SERVERS}")
        if specs[name].mode != "livepush":
            specs[name].extra = {"broadcast": True}
    return specs


# --------------------------------------------------------------------------- processes


class Server:
    def __init__(self, spec: ServerSpec, logdir: Path, pin: bool) -> None:
        self.spec = spec
        self.port = free_port()
        self.pin = pin
        self.logpath = logdir / f"{spec.name}-{self.port}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, session: aiohttp.ClientSession, wait_s: float = 30) -> None:
        argv = [a.replace("{port}", str(self.port)) for a in self.spec.argv]
        if self.pin:
            argv = ["taskset", "-c", self.spec.cpus, *argv]
        env = {**os.environ, **self.spec.env}
        with open_log(self.logpath, "wb") as logf:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(
                    self.base + "/healthz", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        tail = self.logpath.read_text(errors="replace")[-1500:]
        await self.stop()
        raise RuntimeError(f"{self.spec.name} did not become healthy on :{self.port}\n{tail}")

    async def gc(self, session: aiohttp.ClientSession) -> bool:
        """Ask the peer for a full GC (peers only; livepush has no such endpoint)."""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.post(
                self.base + "/debug/gc", timeout=aiohttp.ClientTimeout(total=10)
            ) as r:
                return r.status == 200
        return False

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 8)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


class Blaster:
    """The C calibration source (bench/loadgen/blaster.c), pinned like a server."""

    def __init__(self, logdir: Path, pin: bool) -> None:
        self.spec = ServerSpec("blaster", [], "plain")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.pin = pin
        self.logdir = logdir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, conns: int, msgs: int) -> None:
        argv = [str(BLASTER_BIN), "--port", str(self.port), "--conns", str(conns)]
        argv += ["--msgs", str(msgs), "--timeout", "120"]
        if self.pin:
            argv = ["taskset", "-c", SERVER_CPU, *argv]
        with open_log(self.logdir / f"blaster-{self.port}.err", "ab") as errf:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=errf, stdin=subprocess.DEVNULL
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        if b"listening" not in line:
            raise RuntimeError(f"blaster did not start: {line!r}")

    async def result(self, wait_s: float) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), wait_s)
        return dict(json.loads(line))

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()


class Loadgen:
    def __init__(self, logdir: Path, pin: bool, extra: list[str] | None = None) -> None:
        self.logdir = logdir
        self.pin = pin
        self.extra = extra or []
        self.proc: asyncio.subprocess.Process | None = None
        self.queues: defaultdict[str, asyncio.Queue[dict[str, Any]]] = defaultdict(asyncio.Queue)
        self.lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None
        self.argv: list[str] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(
        self,
        server: Server | Blaster,
        conns: int,
        duration: float,
        batch: int = 100,
        idle: bool = False,
    ) -> None:
        spec = server.spec
        argv = [str(LOADGEN_BIN), "--port", str(server.port), "--conns", str(conns)]
        argv += ["--mode", spec.mode, "--duration", str(duration), "--batch", str(batch)]
        argv += ["--control", *self.extra]
        if spec.token:
            argv += ["--token", spec.token, "--channels", CHANNEL]
        if spec.origin:
            argv += ["--origin", server.base]
        if idle:
            argv += ["--idle"]
        if self.pin:
            argv = ["taskset", "-c", LOADGEN_CPU, *argv]
        self.argv = argv
        errpath = self.logdir / f"loadgen-{server.spec.name}-{server.port}.err"
        with open_log(errpath, "ab") as errf:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf
            )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                log(f"loadgen: unparsable line {line[:200]!r}")
                continue
            self.queues[ev.get("event", "?")].put_nowait(ev)

    async def wait(self, event: str, wait_s: float) -> dict[str, Any]:
        return await asyncio.wait_for(self.queues[event].get(), wait_s)

    async def cmd(self, command: str, event: str, wait_s: float = 10) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        async with self.lock:
            self.proc.stdin.write(command.encode() + b"\n")
            await self.proc.stdin.drain()
            return await self.wait(event, wait_s)

    async def close(self) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        final = None
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                final = await self.cmd("quit", "report", wait_s=10)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        return final


class Publisher:
    def __init__(self, session: aiohttp.ClientSession, server: Server) -> None:
        self.session = session
        self.url = server.base + "/api/v1/publish"
        self.headers = {"Content-Type": "application/json", **server.spec.headers}
        self.extra = server.spec.extra
        self.seq = 0
        self.errors = 0
        self.last_error = ""

    def batch(self, k: int) -> bytes:
        t = time.time_ns()
        msgs = []
        for _ in range(k):
            self.seq += 1
            msgs.append({"type": "bench", "data": {"t": t, "seq": self.seq}, **self.extra})
        return json.dumps({"messages": msgs}, separators=(",", ":")).encode()

    async def post(self, body: bytes) -> bool:
        try:
            async with self.session.post(
                self.url, data=body, headers=self.headers, timeout=aiohttp.ClientTimeout(total=60)
            ) as r:
                await r.read()
                if 200 <= r.status < 300:
                    return True
                self.errors += 1
                self.last_error = f"HTTP {r.status}"
        except (TimeoutError, aiohttp.ClientError) as e:
            self.errors += 1
            self.last_error = repr(e)
        return False


# --------------------------------------------------------------------------- phases


async def drain(lg: Loadgen, expected: int, limit_s: float, stall: float = 3.0) -> dict[str, Any]:
    """Poll the loadgen until `expected` bench messages arrived, progress stalls, or timeout."""
    deadline = time.monotonic() + limit_s
    last, last_change = -1, time.monotonic()
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = await lg.cmd("stat", "stat")
        if st["bench_msgs"] >= expected:
            break
        if st["bench_msgs"] != last:
            last, last_change = st["bench_msgs"], time.monotonic()
        elif time.monotonic() - last_change > stall:
            break
        await asyncio.sleep(0.02)
    return st


async def quiesce(server: Server, limit_s: float = 30.0) -> float:
    """Wait until the server is idle (< 10% CPU over 200 ms), so that a server still working
    off a backlog does not run into the next measurement.  Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        c0 = server.cpu()
        await asyncio.sleep(0.2)
        if server.cpu() - c0 < 0.02:
            break
    return round(time.monotonic() - t0, 2)


def summarize_report(rep: dict[str, Any]) -> dict[str, Any]:
    lat = rep["lat_ms"]
    return {
        "delivered_msgs_per_s": rep["msgs_per_s"],
        "received": rep["bench_msgs"],
        "window_s": rep["window_s"],
        "lat_p50_ms": lat["p50"],
        "lat_p90_ms": lat["p90"],
        "lat_p99_ms": lat["p99"],
        "lat_max_ms": lat["max"],
        "loadgen_cpu_pct": rep["cpu"]["window_pct"],
        "loadgen_cpu_s": round(rep["cpu"]["window_user_s"] + rep["cpu"]["window_sys_s"], 4),
        "reads": rep["reads"],
        "msgs_per_read": round(rep["bench_msgs"] / rep["reads"], 2) if rep["reads"] else None,
        "reads_per_wakeup": round(rep["reads"] / rep["epoll_wakeups"], 1)
        if rep["epoll_wakeups"]
        else None,
        "per_conn_min": rep["per_conn_min"],
        "per_conn_max": rep["per_conn_max"],
        "out_of_order": rep["out_of_order"],
        "open_conns": rep["open"],
        "closed_conns": rep["closed"],
    }


async def saturation(
    lg: Loadgen,
    server: Server,
    pub: Publisher,
    conns: int,
    seconds: float,
    batch: int = 1,
    inflight: int = 4,
) -> dict[str, Any]:
    """Publish as fast as the server drains: `inflight` publish requests of `batch` messages
    each, and at most `window` messages published but not yet received by the average
    subscriber."""
    window = max(2 * batch * inflight, 50_000 // conns)
    await lg.cmd("reset", "reset")
    received = 0
    published = 0
    done = asyncio.Event()

    async def poller() -> None:
        nonlocal received
        while not done.is_set():
            received = (await lg.cmd("stat", "stat"))["bench_msgs"]
            await asyncio.sleep(0.01)

    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds

    async def worker() -> None:
        nonlocal published
        while loop.time() < stop_at:
            if published - received / conns >= window:
                await asyncio.sleep(0.002)
                continue
            body = pub.batch(batch)
            published += batch
            if not await pub.post(body):
                await asyncio.sleep(0.05)

    cpu0, t0 = server.cpu(), time.monotonic()
    pub_cpu0 = time.process_time()
    watch = CpuWatch([server.pid, lg.pid])
    poll = asyncio.create_task(poller())
    await asyncio.gather(*(worker() for _ in range(inflight)))
    done.set()
    await poll
    expected = published * conns
    await drain(lg, expected, limit_s=max(10.0, seconds * 3))
    cpu1, t1 = server.cpu(), time.monotonic()
    pub_cpu1 = time.process_time()
    res = summarize_report(await lg.cmd("report", "report"))
    server_pct = round(100 * (cpu1 - cpu0) / (t1 - t0), 1)
    res.update(
        **watch.stop(),
        harness_cpu_pct=round(100 * (pub_cpu1 - pub_cpu0) / (t1 - t0), 1),
        published=published,
        expected=expected,
        batch=batch,
        inflight=inflight,
        window_msgs=window,
        server_cpu_pct=server_pct,
        publish_errors=pub.errors,
    )
    res["quiesce_s"] = await quiesce(server)
    return res


async def latency(
    lg: Loadgen, server: Server, pub: Publisher, conns: int, deliveries_per_s: float, seconds: float
) -> dict[str, Any]:
    """Open-loop publishing at a fixed rate (the same for every server)."""
    rate = deliveries_per_s / conns  # messages published per second
    tick = max(1.0 / rate, 1.0 / 400)  # at most 400 publish requests per second
    n_ticks = max(1, int(seconds / tick))
    await lg.cmd("reset", "reset")
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[bool]] = set()
    published = skipped = 0
    acc = 0.0
    cpu0, t0 = server.cpu(), time.monotonic()
    watch = CpuWatch([server.pid, lg.pid])
    start = loop.time() + 0.01
    for i in range(n_ticks):
        delay = start + i * tick - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        acc += rate * tick
        k = int(acc)
        acc -= k
        if k == 0:
            continue
        if len(tasks) >= 64:  # server is not even accepting publishes at this rate
            skipped += k
            continue
        body = pub.batch(k)
        published += k
        task = asyncio.create_task(pub.post(body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    expected = published * conns
    await drain(lg, expected, limit_s=max(10.0, seconds * 4))
    cpu1, t1 = server.cpu(), time.monotonic()
    rep = await lg.cmd("report", "report")
    res = summarize_report(rep)
    res.update(watch.stop())
    delivered_frac = rep["bench_msgs"] / expected if expected else 0.0
    res.update(
        offered_deliveries_per_s=round(deliveries_per_s, 1),
        offered_msgs_per_s=round(rate, 2),
        published=published,
        skipped=skipped,
        expected=expected,
        delivered_frac=round(delivered_frac, 5),
        sustained=bool(
            delivered_frac >= 0.999 and rep["msgs_per_s"] >= 0.9 * deliveries_per_s and not skipped
        ),
        server_cpu_pct=round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        publish_errors=pub.errors,
    )
    res["rate_frac"] = round(rep["msgs_per_s"] / deliveries_per_s, 3)
    res["quiesce_s"] = await quiesce(server)
    return res


async def calibration_case(conns: int, cfg: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    """Loadgen ceiling: the C blaster (CPU 0) writes K frames to each of N sockets as fast as the
    kernel takes them, one write() per frame; the loadgen (CPU 1) receives them."""
    msgs = max(20, int(cfg.sat_seconds * 250_000 / conns))
    out: dict[str, Any] = {"subscribers": conns, "msgs_per_conn": msgs, "runs": []}

    async def one() -> dict[str, Any]:
        blaster = Blaster(logdir, cfg.pin)
        lg = Loadgen(logdir, cfg.pin, loadgen_flags(cfg))
        try:
            await blaster.start(conns, msgs)
            await lg.start(blaster, conns, duration=120)
            await lg.wait("ready", wait_s=60)
            await lg.cmd("reset", "reset")
            watch = CpuWatch([blaster.pid, lg.pid])
            bl = await blaster.result(wait_s=120)
            await drain(lg, msgs * conns, limit_s=20)
            rep = await lg.cmd("report", "report")
            usage = watch.stop()
        finally:
            await lg.close()
            await blaster.stop()
        run = summarize_report(rep)
        run.update(usage)
        run["blaster_writes_per_s"] = bl["writes_per_s"]
        run["blaster_cpu_pct"] = round(100 * bl["cpu_s"] / bl["elapsed_s"], 1)
        return run

    try:
        for i in range(cfg.reps):
            run = await retry_if_disturbed(f"calibration #{i + 1}", cfg, one)
            out["runs"].append(run)
            log(
                f"calibration @ {conns}: loadgen received {run['delivered_msgs_per_s']:,.0f} "
                f"msgs/s at {run['loadgen_cpu_pct']}% CPU (blaster {run['blaster_cpu_pct']}% "
                f"CPU, other processes {run['other_procs_cpu_pct']}%)"
            )
        out["summary"] = {
            "delivered_msgs_per_s": med([r["delivered_msgs_per_s"] for r in out["runs"]]),
            "loadgen_cpu_pct": med([r["loadgen_cpu_pct"] for r in out["runs"]]),
            "blaster_cpu_pct": med([r["blaster_cpu_pct"] for r in out["runs"]]),
        }
    except Exception as e:
        log(f"calibration @ {conns}: FAILED: {e!r}")
        out["error"] = repr(e)
    return out


def loadgen_flags(cfg: argparse.Namespace) -> list[str]:
    flags = ["--coalesce-us", str(cfg.coalesce_us)] if cfg.coalesce_us > 0 else []
    return flags + cfg.loadgen_args.split()


def med(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


@dataclass
class Contender:
    """One server under test with its own load generator and publisher, at one size."""

    spec: ServerSpec
    server: Server
    lg: Loadgen
    case: dict[str, Any]
    pub: Publisher | None = None
    conns: int = 0
    sat: list[dict[str, Any]] = field(default_factory=list)
    lat: list[dict[str, Any]] = field(default_factory=list)


async def fanout_size(
    specs: list[ServerSpec],
    conns: int,
    cfg: argparse.Namespace,
    lat_rates: dict[int, float],
    session: aiohttp.ClientSession,
    logdir: Path,
) -> list[dict[str, Any]]:
    """All servers are started (each pinned to CPU 0, idle when not measured) and connected
    at once; the repetitions then go round-robin over the servers (A B C D, A B C D, ...) so a
    slow drift of the machine's speed affects every server alike."""
    cons = [
        Contender(
            spec,
            Server(spec, logdir, cfg.pin),
            Loadgen(logdir, cfg.pin, loadgen_flags(cfg)),
            {"server": spec.name, "subscribers": conns},
        )
        for spec in specs
    ]

    def fail(c: Contender, what: str, e: Exception) -> None:
        log(f"{c.spec.name} @ {conns}: {what} FAILED: {e!r}")
        c.case["error"] = f"{what}: {e!r}"

    try:
        for c in cons:
            try:
                await c.server.start(session)
                await c.lg.start(c.server, conns, duration=cfg.case_timeout)
                ready = await c.lg.wait("ready", wait_s=120)
                c.case.update(
                    connected=ready["connected"],
                    failed=ready["failed"],
                    connect_s=ready["connect_s"],
                )
                log(
                    f"{c.spec.name} @ {conns}: {ready['connected']} connected in "
                    f"{ready['connect_s']}s"
                )
                if ready["connected"] == 0:
                    raise RuntimeError("no connection could be established")
                c.conns = ready["connected"]
                c.pub = Publisher(session, c.server)
            except Exception as e:
                fail(c, "start", e)
        await asyncio.sleep(0.5)  # let connected/welcome frames settle
        for c in cons:
            if "error" not in c.case:
                try:  # warm-up burst, not recorded
                    assert c.pub is not None
                    await saturation(
                        c.lg,
                        c.server,
                        c.pub,
                        c.conns,
                        min(1.0, cfg.sat_seconds),
                        cfg.sat_batch,
                        cfg.sat_inflight,
                    )
                except Exception as e:
                    fail(c, "warm-up", e)

        for rep in range(cfg.reps):
            for c in cons:
                if "error" in c.case:
                    continue

                async def sat_run(c: Contender = c) -> dict[str, Any]:
                    assert c.pub is not None
                    return await saturation(
                        c.lg,
                        c.server,
                        c.pub,
                        c.conns,
                        cfg.sat_seconds,
                        cfg.sat_batch,
                        cfg.sat_inflight,
                    )

                try:
                    r = await retry_if_disturbed(f"{c.spec.name} saturation", cfg, sat_run)
                except Exception as e:
                    fail(c, "saturation", e)
                    continue
                c.sat.append(r)
                log(
                    f"{c.spec.name} @ {conns} saturation #{rep + 1}: "
                    f"{r['delivered_msgs_per_s']:,.0f} msgs/s ({r['received']}/{r['expected']}), "
                    f"server cpu {r['server_cpu_pct']}%, loadgen cpu {r['loadgen_cpu_pct']}% "
                    f"({r['msgs_per_read']} msgs/read, {r['reads_per_wakeup']} reads/wakeup), "
                    f"other processes {r['other_procs_cpu_pct']}%"
                )
        for c in cons:
            sat_median = med([r["delivered_msgs_per_s"] for r in c.sat]) or 0.0
            if c.spec.name == "node-ws" and conns not in lat_rates and sat_median > 0:
                lat_rates[conns] = cfg.lat_fraction * sat_median
        rate = lat_rates.get(conns, cfg.lat_deliveries)

        for rep in range(cfg.reps):
            for c in cons:
                if "error" in c.case:
                    continue

                async def lat_run(c: Contender = c) -> dict[str, Any]:
                    assert c.pub is not None
                    return await latency(c.lg, c.server, c.pub, c.conns, rate, cfg.lat_seconds)

                try:
                    r = await retry_if_disturbed(f"{c.spec.name} latency", cfg, lat_run)
                except Exception as e:
                    fail(c, "latency", e)
                    continue
                c.lat.append(r)
                log(
                    f"{c.spec.name} @ {conns} latency #{rep + 1} @ {rate:,.0f} deliveries/s: "
                    f"p50 {r['lat_p50_ms']} ms, p99 {r['lat_p99_ms']} ms, "
                    f"sustained={r['sustained']}"
                )

        for c in cons:
            if "error" in c.case or not c.sat or not c.lat:
                continue
            sat, lat = c.sat, c.lat
            assert c.pub is not None
            c.case["saturation"] = sat
            c.case["latency"] = lat
            c.case["summary"] = {
                "delivered_msgs_per_s": med([r["delivered_msgs_per_s"] for r in sat]),
                "server_cpu_pct": med([r["server_cpu_pct"] for r in sat]),
                "other_procs_cpu_pct_max": max(r["other_procs_cpu_pct"] for r in sat + lat),
                "disturbed_runs": sum(r["disturbed"] for r in sat + lat),
                "loadgen_cpu_pct_max": max(r["loadgen_cpu_pct"] for r in sat),
                "loadgen_cpu_pct_median": med([r["loadgen_cpu_pct"] for r in sat]),
                "sat_lat_p50_ms": med([r["lat_p50_ms"] for r in sat]),
                "sat_lat_p99_ms": med([r["lat_p99_ms"] for r in sat]),
                "lat_offered_deliveries_per_s": round(rate, 1),
                "lat_p50_ms": med([r["lat_p50_ms"] for r in lat]),
                "lat_p99_ms": med([r["lat_p99_ms"] for r in lat]),
                "lat_sustained": all(r["sustained"] for r in lat),
                "lat_delivered_frac": min(r["delivered_frac"] for r in lat),
                "lat_rate_frac": med([r["rate_frac"] for r in lat]),
                "publish_errors": c.pub.errors,
                "publish_last_error": c.pub.last_error,
            }
    finally:
        for c in cons:
            final = await c.lg.close()
            if final is not None:
                c.case["loadgen_final"] = {k: final[k] for k in ("connected", "failed", "closed")}
            await c.server.stop()
    return [c.case for c in cons]


async def memory_case(
    spec: ServerSpec,
    conns: int,
    cfg: argparse.Namespace,
    session: aiohttp.ClientSession,
    logdir: Path,
) -> dict[str, Any]:
    server = Server(spec, logdir, cfg.pin)
    out: dict[str, Any] = {"server": spec.name, "conns": conns}
    try:
        await server.start(session)
        # warm-up: a few connections so lazily imported/allocated code paths are in the baseline
        warm = Loadgen(logdir, cfg.pin)
        await warm.start(server, min(50, conns), duration=60, idle=True)
        await warm.wait("ready", wait_s=60)
        await warm.close()
        await asyncio.sleep(1.0)
        out["gc_endpoint"] = await server.gc(session)
        await asyncio.sleep(cfg.settle)
        rss0 = server.rss_kb()
        lg = Loadgen(logdir, cfg.pin)
        try:
            await lg.start(server, conns, duration=cfg.case_timeout, idle=True)
            try:
                ready = await lg.wait("ready", wait_s=90)
            except TimeoutError:
                st = await lg.cmd("stat", "stat") if lg.proc.returncode is None else {}
                raise RuntimeError(
                    f"connections not ready after 90 s (loadgen exit code "
                    f"{lg.proc.returncode}, counters {st})"
                ) from None
            await asyncio.sleep(cfg.settle)
            await server.gc(session)
            await asyncio.sleep(cfg.settle)
            rss1 = server.rss_kb()
            st = await lg.cmd("stat", "stat")
        finally:
            await lg.close()
        open_conns = st["connected"] - st["closed"]
        out.update(
            connected=ready["connected"],
            failed=ready["failed"],
            still_open=open_conns,
            connect_s=ready["connect_s"],
            rss_before_kb=rss0,
            rss_after_kb=rss1,
            kb_per_conn=round((rss1 - rss0) / open_conns, 2) if open_conns else None,
        )
        log(
            f"{spec.name} idle x{conns}: RSS {rss0} -> {rss1} KB, "
            f"{out['kb_per_conn']} KB/conn ({open_conns} open, connect {ready['connect_s']}s)"
        )
    except Exception as e:
        log(f"{spec.name} memory: FAILED: {e!r}")
        out["error"] = repr(e)
    finally:
        await server.stop()
    return out


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("aiohttp", "socketio", "engineio", "uvloop"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions["python-socketio"] = version("python-socketio")
        versions["python-engineio"] = version("python-engineio")
        versions["livepush"] = version("livepush")
    versions["node"] = cmd_output(["node", "--version"])[1]
    with contextlib.suppress(Exception):
        pkg = json.loads((NODE_DIR / "node_modules" / "ws" / "package.json").read_text())
        versions["ws"] = pkg["version"]
    rc, head = cmd_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "versions": versions,
        "git_head": head if rc == 0 else None,
    }


def fmt(v: Any, spec: str = ",.0f") -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    fan = [c for c in results["fanout"] if "summary" in c]
    node = {c["subscribers"]: c["summary"] for c in fan if c["server"] == "node-ws"}
    if results["fanout"]:
        lines += [
            "| server | subscribers | delivered msgs/s | vs node-ws | server CPU | "
            "loadgen CPU (median / max) | latency phase: deliveries/s | p50 ms | p99 ms | "
            "p99 vs node-ws | rate sustained |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in results["fanout"]:
            n = c["subscribers"]
            if "summary" not in c:
                err = str(c.get("error", "?"))[:100].replace("|", "/")
                lines.append(f"| {c['server']} | {n:,} | failed: {err} | | | | | | | | |")
                continue
            s = c["summary"]
            ref = node.get(n)
            ratio = s["delivered_msgs_per_s"] / ref["delivered_msgs_per_s"] if ref else None
            p99r = (
                s["lat_p99_ms"] / ref["lat_p99_ms"]
                if ref and ref["lat_p99_ms"] and s["lat_p99_ms"] is not None
                else None
            )
            sustained = (
                "yes"
                if s["lat_sustained"]
                else f"no: {s['lat_rate_frac']:.2f} of the rate, "
                f"{s['lat_delivered_frac']:.3f} delivered"
            )
            lines.append(
                f"| {c['server']} | {n:,} | {fmt(s['delivered_msgs_per_s'])} | "
                f"{fmt(ratio, '.2f')}x | {fmt(s['server_cpu_pct'], '.0f')}% | "
                f"{fmt(s['loadgen_cpu_pct_median'], '.0f')}% / "
                f"{fmt(s['loadgen_cpu_pct_max'], '.0f')}% | "
                f"{fmt(s['lat_offered_deliveries_per_s'])} | {fmt(s['lat_p50_ms'], '.2f')} | "
                f"{fmt(s['lat_p99_ms'], '.2f')} | {fmt(p99r, '.2f')}x | {sustained} |"
            )
    cal = [c for c in results.get("calibration", []) if "summary" in c]
    if cal:
        lines += [
            "",
            "| subscribers | loadgen ceiling: msgs/s received from the C blaster | loadgen CPU | "
            "blaster CPU | fastest server | fastest server / ceiling |",
            "|---:|---:|---:|---:|---|---:|",
        ]
        for c in cal:
            n = c["subscribers"]
            cs = c["summary"]
            same = [f for f in fan if f["subscribers"] == n]
            best = max(same, key=lambda f: f["summary"]["delivered_msgs_per_s"], default=None)
            best_name = best["server"] if best else "-"
            best_rate = best["summary"]["delivered_msgs_per_s"] if best else None
            frac = best_rate / cs["delivered_msgs_per_s"] if best_rate else None
            lines.append(
                f"| {n:,} | {fmt(cs['delivered_msgs_per_s'])} | "
                f"{fmt(cs['loadgen_cpu_pct'], '.0f')}% | {fmt(cs['blaster_cpu_pct'], '.0f')}% | "
                f"{best_name} {fmt(best_rate)} | "
                f"{fmt(frac, '.2f')} |"
            )
    if results["memory"]:
        lines += [
            "",
            "| server | idle connections | RSS before (MB) | RSS after (MB) | KB per connection "
            "(median) | runs (KB/conn) |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, m in results["memory_summary"].items():
            runs = [r for r in results["memory"] if r["server"] == name]
            ok = [r for r in runs if r.get("kb_per_conn") is not None]
            if not ok:
                err = str(runs[0].get("error", "?") if runs else "?")[:100].replace("|", "/")
                lines.append(f"| {name} | - | - | - | failed: {err} | |")
                continue
            lines.append(
                f"| {name} | {m['still_open']:,} | {fmt(m['rss_before_kb'] / 1024, '.1f')} | "
                f"{fmt(m['rss_after_kb'] / 1024, '.1f')} | {fmt(m['kb_per_conn'], '.2f')} | "
                + ", ".join(fmt(r["kb_per_conn"], ".2f") for r in ok)
                + " |"
            )
    return "\n".join(lines)


def evidence(results: dict[str, Any]) -> list[str]:
    """Plain statements on whether the load generator was the bottleneck."""
    fan = [c for c in results["fanout"] if "summary" in c]
    cal = {c["subscribers"]: c["summary"] for c in results.get("calibration", []) if "summary" in c}
    out = []
    for n in sorted({c["subscribers"] for c in fan}):
        cases = sorted(
            (c for c in fan if c["subscribers"] == n),
            key=lambda c: -c["summary"]["delivered_msgs_per_s"],
        )
        best = cases[0]["summary"]
        lg_max = max(c["summary"]["loadgen_cpu_pct_max"] for c in cases)
        h_max = max(max(r["harness_cpu_pct"] for r in c["saturation"]) for c in cases)
        srv_min = min(c["summary"]["server_cpu_pct"] for c in cases)
        line = (
            f"{n:,} subscribers: fastest server {cases[0]['server']} "
            f"{best['delivered_msgs_per_s']:,.0f} msgs/s "
            f"(server CPU {best['server_cpu_pct']:.0f}%, "
            f"loadgen CPU {best['loadgen_cpu_pct_max']:.0f}%); the others "
            + ", ".join(
                f"{c['server']} {c['summary']['delivered_msgs_per_s']:,.0f}" for c in cases[1:]
            )
            + f". Server CPU during saturation >= {srv_min:.0f}% for every server; loadgen CPU "
            f"<= {lg_max:.0f}%, publisher/harness CPU (same core as the loadgen) <= {h_max:.0f}%."
            f" Runs with other processes above {results['config']['max_other_load']:.0f}% CPU "
            f"even after retrying: {sum(c['summary']['disturbed_runs'] for c in cases)}."
        )
        if n in cal:
            c = cal[n]
            line += (
                f" Loadgen ceiling (C blaster): {c['delivered_msgs_per_s']:,.0f} msgs/s at "
                f"{c['loadgen_cpu_pct']:.0f}% loadgen CPU and {c['blaster_cpu_pct']:.0f}% blaster "
                f"CPU; the fastest server reached "
                f"{best['delivered_msgs_per_s'] / c['delivered_msgs_per_s']:.0%} of it."
            )
        out.append(line)
    return out


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 200 subscribers, 1 rep")
    p.add_argument("--servers", default=",".join(ALL_SERVERS))
    p.add_argument("--sizes", default="1000,5000", help="subscriber counts for the fan-out case")
    p.add_argument("--idle-conns", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sat-seconds", type=float, default=3.0)
    p.add_argument("--lat-seconds", type=float, default=3.0)
    p.add_argument(
        "--sat-batch",
        type=int,
        default=1,
        help="messages per publish request in the saturation phase (default 1: every message "
        "is its own publish, as n8n pushes events; larger batches let a server that coalesces "
        "a batch into one write per socket - livepush does - skip per-message syscalls)",
    )
    p.add_argument("--sat-inflight", type=int, default=4, help="publish requests in flight")
    p.add_argument(
        "--lat-fraction",
        type=float,
        default=0.5,
        help="latency-phase rate as a fraction of node-ws's median saturation throughput",
    )
    p.add_argument(
        "--lat-deliveries",
        type=float,
        default=100_000,
        help="latency-phase deliveries/s used when node-ws is not part of the run",
    )
    p.add_argument("--settle", type=float, default=2.0, help="seconds before reading RSS")
    p.add_argument("--skip-fanout", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-calibration", action="store_true", help="skip the loadgen ceiling")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument(
        "--coalesce-us",
        type=int,
        default=100,
        help="loadgen sleeps this long after an epoll round with < 256 ready sockets, so it "
        "is not woken once per message (adds <= this much to measured latency; 0 = off)",
    )
    p.add_argument(
        "--max-other-load",
        type=float,
        default=10.0,
        help="repeat a measurement (at most twice) when processes other than this harness and "
        "its children used more than this %% of a core during it (another job on the machine)",
    )
    p.add_argument("--loadgen-args", default="", help="extra loadgen flags")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument("--max-seconds", type=float, default=1200, help="hard limit for the run")
    cfg = p.parse_args()
    if cfg.quick:
        cfg.sizes = "200"
        cfg.idle_conns = min(cfg.idle_conns, 500)
        cfg.reps = 1
        cfg.sat_seconds = 1.0
        cfg.lat_seconds = 1.0
        cfg.settle = 0.5
        cfg.lat_deliveries = min(cfg.lat_deliveries, 20_000)
    cfg.case_timeout = 600
    return cfg


async def amain(cfg: argparse.Namespace) -> dict[str, Any]:
    names = [s.strip() for s in cfg.servers.split(",") if s.strip()]
    # node-ws first: its saturation throughput sets the common latency-phase rate
    names.sort(key=lambda n: 0 if n == "node-ws" else 1)
    sizes = [int(s) for s in cfg.sizes.split(",") if s.strip()]
    specs = build_specs(names)
    for s in specs.values():
        if not s.available:
            log(f"skipping {s.name}: {s.reason}")
    logdir = Path(tempfile.mkdtemp(prefix="livepush-bench-"))
    log(f"server/loadgen logs in {logdir}")
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "pinning": {"server_cpu": SERVER_CPU, "loadgen_cpu": LOADGEN_CPU, "harness_cpu": "1"}
        if cfg.pin
        else None,
        "skipped": {s.name: s.reason for s in specs.values() if not s.available},
        "calibration": [],
        "fanout": [],
        "memory": [],
        "memory_summary": {},
        "lat_rates": {},
    }
    lat_rates: dict[int, float] = {}
    connector = aiohttp.TCPConnector(limit=128, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        if not cfg.skip_fanout and not cfg.skip_calibration:
            for n in sizes:
                results["calibration"].append(await calibration_case(n, cfg, logdir))
        if not cfg.skip_fanout:
            active = [specs[name] for name in names if specs[name].available]
            for n in sizes:
                results["fanout"].extend(
                    await fanout_size(active, n, cfg, lat_rates, session, logdir)
                )
        results["lat_rates"] = {str(k): v for k, v in lat_rates.items()}
        if not cfg.skip_memory:
            for name in names:
                spec = specs[name]
                if not spec.available:
                    continue
                runs = []
                for _ in range(cfg.reps):
                    run = await memory_case(spec, cfg.idle_conns, cfg, session, logdir)
                    if "error" in run:  # one more try, e.g. after a burst of other load
                        run = await memory_case(spec, cfg.idle_conns, cfg, session, logdir)
                    runs.append(run)
                results["memory"].extend(runs)
                ok = [r for r in runs if r.get("kb_per_conn") is not None]
                if ok:
                    ok.sort(key=lambda r: r["kb_per_conn"])
                    results["memory_summary"][name] = ok[len(ok) // 2]
                else:
                    results["memory_summary"][name] = {}
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["logdir"] = str(logdir)
    return results


def main() -> int:
    cfg = parse_args()
    nofile = raise_nofile()
    if nofile < cfg.idle_conns + 100:
        log(f"warning: RLIMIT_NOFILE is {nofile}; the memory case needs > {cfg.idle_conns}")
    if cfg.pin:
        if (os.cpu_count() or 1) < 2:
            log("fewer than 2 CPUs: disabling pinning")
            cfg.pin = False
        else:
            os.sched_setaffinity(0, {int(LOADGEN_CPU)})  # the publisher shares the loadgen core
    ensure_loadgen()
    if "node-ws" in cfg.servers:
        ensure_node_modules()
    t0 = time.monotonic()
    try:
        results = asyncio.run(asyncio.wait_for(amain(cfg), cfg.max_seconds))
    except TimeoutError:
        log(f"run exceeded --max-seconds={cfg.max_seconds}; aborted")
        return 2
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    table = markdown(results)
    ev = evidence(results)
    RESULTS.mkdir(exist_ok=True)
    out = cfg.out or RESULTS / (
        dt.date.today().isoformat() + ("-quick" if cfg.quick else "") + ".json"
    )
    results["markdown"] = table
    results["evidence"] = ev
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print()
    for line in ev:
        print("- " + line)
    for name, reason in results["skipped"].items():
        print(f"- skipped {name}: {reason}")
    print(f"\nresults: {out} (elapsed {results['elapsed_s']} s)")
    failed = [c for c in results["fanout"] if "error" in c] + [
        m for m in results["memory"] if "error" in m
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
