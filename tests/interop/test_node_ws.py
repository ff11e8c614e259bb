"""Interop with npm's `ws` (the WebSocket library n8n itself uses), in a real Node process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import RunningServer, require_npm


@pytest.fixture
def node_ws() -> Path:
    return require_npm("ws") / "ws-client.mjs"


async def test_node_ws_client_receives_publications_in_order(
    server: RunningServer, http: aiohttp.ClientSession, node_ws: Path
):
    url = server.push_url("nodetab", server.token("alice")).replace("http://", "ws://")
    process = await asyncio.create_subprocess_exec(
        "node",
        str(node_ws),
        url,
        "workflow:1",
        "50",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    lines: list[dict] = []
    async with asyncio.timeout(20):
        while True:
            line = await process.stdout.readline()
            assert line, (await process.stderr.read()).decode() if process.stderr else ""
            lines.append(json.loads(line))
            if lines[-1].get("ready"):
                break
        messages = [
            {
                "type": "nodeExecuteBefore",
                "data": {
                    "executionId": "1",
                    "nodeName": f"n{i}",
                    "sequenceNumber": i,
                    "data": {"startTime": 1764064800000, "executionIndex": i, "source": [None]},
                },
                "channel": "workflow:1",
            }
            for i in range(50)
        ]
        status, _ = await server.publish(http, {"messages": messages})
        assert status == 200
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    lines += [json.loads(line) for line in out.decode().splitlines()]
    frames = [entry["frame"] for entry in lines if "frame" in entry]
    assert frames[0]["type"] == "connected"
    published = [f for f in frames if f.get("channel") == "workflow:1"]
    assert [f["data"]["nodeName"] for f in published] == [f"n{i}" for i in range(50)]
    assert [f["offset"] for f in published] == list(range(1, 51))
    assert all(not entry["binary"] for entry in lines if "frame" in entry)
    assert lines[-1] == {"closed": 1000}
