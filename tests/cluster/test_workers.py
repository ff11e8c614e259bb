"""`livepush serve --workers N`: worker processes on one port (SO_REUSEPORT), coordinated
through Redis, supervised."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import aiohttp

from tests.cluster.test_cluster import Watcher, publish
from tests.conftest import API_KEY, SECRET, redis_url
from tests.integration.process import ServerProcess, serve_process


def _env() -> dict[str, str]:
    return {
        "LIVEPUSH_ENGINE": "redis",
        "LIVEPUSH_REDIS_URL": redis_url(),
        "LIVEPUSH_REDIS_PREFIX": f"lpworkers-{uuid.uuid4().hex[:8]}",
        "LIVEPUSH_JWT_SECRET": SECRET,
        "LIVEPUSH_API_KEY": API_KEY,
    }


async def _pids(server: ServerProcess, expected: int = 2, timeout: float = 20.0) -> set[int]:
    """The worker pids answering `/healthz`, each request on a new connection, polled until
    `expected` distinct ones answered (a worker may still be starting, or restarting)."""
    pids: set[int] = set()
    async with (
        asyncio.timeout(timeout),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
    ):
        while len(pids) < expected:
            try:
                async with http.get(f"{server.url}/healthz") as response:
                    pids.add((await response.json())["pid"])
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    return pids


async def test_workers_share_the_port_and_the_channels() -> None:
    channel = "workflow:workers"
    async with serve_process("--workers", "2", env=_env()) as server:
        assert "supervising 2 workers" in server.banner
        pids = await _pids(server)
        assert len(pids) == 2 and server.process.pid not in pids
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            watchers = [await Watcher.connect(http, server, f"tab{i}", channel) for i in range(8)]
            for n in range(100):
                body = {"type": "tick", "data": {"n": n}, "channel": channel}
                status, _ = await publish(http, server, body)
                assert status == 200
            for watcher in watchers:
                await watcher.wait(lambda w=watcher: len(w.on(channel)) == 100)
                assert [m["data"]["n"] for m in watcher.on(channel)] == list(range(100))
            for watcher in watchers:
                await watcher.close()
        # SIGTERM to the supervisor drains every worker and exits cleanly
        assert await server.stop(timeout=20) == 0
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"worker {pid} still running")


async def test_a_killed_worker_is_restarted() -> None:
    async with serve_process("--workers", "2", env=_env()) as server:
        pids = await _pids(server)
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        async with asyncio.timeout(20):
            while True:
                now = await _pids(server)
                if victim not in now:
                    break
                await asyncio.sleep(0.1)
        assert "restarting" in "".join(server.output)
        assert await server.stop(timeout=20) == 0


async def test_workers_do_not_outlive_a_killed_supervisor() -> None:
    async with serve_process("--workers", "2", env=_env()) as server:
        pids = await _pids(server)
        server.kill()
        async with asyncio.timeout(15):
            while pids:
                for pid in list(pids):
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        pids.discard(pid)
                await asyncio.sleep(0.05)
