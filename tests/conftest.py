"""Shared fixtures: real livepush servers on loopback ports, real HTTP/WebSocket clients."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from livepush.auth.tokens import mint_token
from livepush.config import load_config
from livepush.core.node import Node
from livepush.server.app import SERVICES, Services, create_app
from livepush.server.runner import AppRunner

SECRET = "test-secret-0123456789abcdef0123456789abcdef"
API_KEY = "test-api-key-0123456789"


def missing(message: str) -> NoReturn:
    """Something a test needs is not there: skip, but fail in CI (CI=true), which must
    provide it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI must provide it)")
    pytest.skip(message)


def require(tool: str) -> str:
    """Path of an external tool a test needs (see `missing`)."""
    path = shutil.which(tool)
    if path is None:
        missing(f"{tool} is not installed")
    return path


NODE_DIR = Path(__file__).parent / "interop" / "node"


def require_npm(*packages: str) -> Path:
    """Node and the npm packages of tests/interop/node; returns that directory."""
    require("node")
    for package in packages:
        if not (NODE_DIR / "node_modules" / package).is_dir():
            missing(f"npm package {package} missing: run `make dev` (npm ci in {NODE_DIR})")
    return NODE_DIR


def redis_url() -> str:
    """The Redis the tests use (LIVEPUSH_TEST_REDIS_URL, default the local one); every test
    works under its own key prefix. Skips when Redis is not running, fails in CI."""
    url = os.environ.get("LIVEPUSH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    host_port = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host, int(port or 6379)), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            answered = sock.recv(16).startswith(b"+PONG")
    except OSError:
        answered = False
    if not answered:
        missing(f"no Redis at {url} (start one: redis-server --daemonize yes --port 6379)")
    return url


@dataclass
class RunningServer:
    """A livepush node served on a loopback port."""

    url: str
    services: Services
    config: Any
    runner: web.AppRunner
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def node(self) -> Node:
        return self.services.node

    @property
    def ws_base(self) -> str:
        return self.url.replace("http://", "ws://")

    def token(self, user: str = "alice", **claims: Any) -> str:
        claims.setdefault("workflows", ["1", "2"])
        return mint_token(SECRET, user, **claims)

    def push_url(self, push_ref: str, token: str | None = None, **params: str) -> str:
        query: dict[str, str] = {"pushRef": push_ref, **params}
        if token is not None:
            query["token"] = token
        return f"{self.url}{self.config.rest_prefix}/push?{urlencode(query)}"

    async def publish(
        self, http: aiohttp.ClientSession, body: dict[str, Any], api_key: str = API_KEY
    ) -> tuple[int, Any]:
        async with http.post(
            f"{self.url}/api/v1/publish",
            json=body,
            headers={"Authorization": f"Bearer {api_key}"},
        ) as response:
            return response.status, await response.json()

    async def stop(self) -> None:
        await self.runner.cleanup()


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def server_factory() -> AsyncIterator[ServerFactory]:
    started: list[RunningServer] = []

    async def start(*, handler_cancellation: bool = True, **overrides: Any) -> RunningServer:
        settings: dict[str, Any] = {
            "port": 0,
            "jwt_secret": SECRET,
            "api_key": API_KEY,
            **overrides,
        }
        config = load_config(settings, environ={})
        app = create_app(config)
        runner = AppRunner(app, handler_cancellation=handler_cancellation, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        running = RunningServer(f"http://127.0.0.1:{port}", app[SERVICES], config, runner)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def server(server_factory: ServerFactory) -> RunningServer:
    return await server_factory()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def private_redis() -> AsyncIterator[Any]:
    """A `redis-server` of the test's own (no persistence), which the test may kill and
    restart; killed at the end."""
    from tests.integration.redis_process import RedisProcess

    server = RedisProcess()
    await server.start()
    yield server
    await server.kill()


@pytest.fixture
async def redis_cluster(tmp_path: Any) -> AsyncIterator[Any]:
    """A local three-primary Redis Cluster of the test's own; killed at the end."""
    from tests.integration.redis_process import RedisClusterProcesses

    cluster = RedisClusterProcesses(str(tmp_path))
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.kill()
