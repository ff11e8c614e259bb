"""A private `redis-server` process for tests that kill or restart Redis."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import redis.asyncio as aioredis

from tests.conftest import require


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A `redis-server` without persistence on its own port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            require("redis-server"),
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
        )
        await _wait_ping(self.url)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    import random

    while True:
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class RedisClusterProcesses:
    """A local Redis Cluster: three primaries (`redis-server --cluster-enabled yes`, no
    persistence) joined with `redis-cli --cluster create`, in a temporary directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.ports = [_free_cluster_port() for _ in range(3)]
        self.processes: list[asyncio.subprocess.Process] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    async def start(self) -> None:
        server = require("redis-server")
        cli = require("redis-cli")
        for port in self.ports:
            self.processes.append(
                await asyncio.create_subprocess_exec(
                    server,
                    "--port",
                    str(port),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self.directory,
                    stdout=asyncio.subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            await _wait_ping(f"redis://127.0.0.1:{port}/0")
        create = await asyncio.create_subprocess_exec(
            cli,
            "--cluster",
            "create",
            *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await create.communicate()
        assert create.returncode == 0, output.decode()
        async with asyncio.timeout(20):
            for port in self.ports:
                client = aioredis.Redis(port=port)
                try:
                    while True:
                        info = await client.execute_command("CLUSTER INFO")
                        if info.get("cluster_state") == "ok":  # parsed by redis-py
                            break
                        await asyncio.sleep(0.1)
                finally:
                    await client.aclose()

    async def kill(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _wait_ping(url: str) -> None:
    """Until the Redis at `url` answers PING (10 s at most)."""
    client = aioredis.Redis.from_url(url)
    try:
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(OSError, aioredis.ConnectionError):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
