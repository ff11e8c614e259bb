"""A Node.js worker publishes through Redis with the documented Redis-level format (ioredis and
the shipped publish.lua, no livepush code); a client of a livepush node receives it all."""

from __future__ import annotations

import asyncio
import json
import uuid
from importlib import resources
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import RunningServer, ServerFactory, redis_url, require_npm
from tests.integration.helpers import receive_json


@pytest.fixture
def publisher_script() -> Path:
    return require_npm("ioredis") / "redis-publisher.mjs"


async def test_node_worker_publishes_through_redis(
    server_factory: ServerFactory, http: aiohttp.ClientSession, publisher_script: Path
) -> None:
    prefix = f"lpnode-{uuid.uuid4().hex[:8]}"
    url = redis_url()
    server: RunningServer = await server_factory(engine="redis", redis_url=url, redis_prefix=prefix)
    ws = await http.ws_connect(server.push_url("tab", server.token(), channels="workflow:1"))
    assert (await receive_json(ws))["type"] == "connected"
    lua = resources.files("livepush.engines.redis").joinpath("lua", "publish.lua")
    process = await asyncio.create_subprocess_exec(
        "node",
        str(publisher_script),
        url,
        prefix,
        "workflow:1",
        "30",
        str(lua),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    placed = json.loads(stdout)
    assert [p["offset"] for p in placed] == list(range(1, 31))
    received = [await receive_json(ws) for _ in range(31)]
    assert [m["data"]["n"] for m in received[:30]] == list(range(30))
    assert [m["offset"] for m in received[:30]] == list(range(1, 31))
    assert {m["epoch"] for m in received[:30]} == {placed[0]["epoch"]}
    assert received[30]["type"] == "cursorMoved" and "offset" not in received[30]
    await ws.close()
