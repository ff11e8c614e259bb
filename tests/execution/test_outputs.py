"""Large node outputs against a real server: chunked under a per-connection budget and
reassembled intact, never in the way of other executions; by reference above the push limit;
nothing dropped silently."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import msgspec
import pytest

from livepush.execution import Execution
from livepush.protocol.errors import ErrorCode, ProtocolError
from tests.conftest import API_KEY, RunningServer
from tests.execution.test_executions import Watcher
from tests.integration.helpers import SseReader

pytestmark = pytest.mark.timeout(120)


def items_of(total_bytes: int, tag: str) -> list[dict[str, Any]]:
    """About `total_bytes` of JSON items (with non-ASCII text, to cross UTF-8 chunk cuts)."""
    count = max(1, total_bytes // 1000)
    filler = "é" * 200 + "x" * 560
    return [{"json": {"tag": tag, "i": i, "text": filler}} for i in range(count)]


def reassemble(chunks: list[dict[str, Any]]) -> str:
    assert [c["data"]["index"] for c in chunks] == list(range(len(chunks)))
    assert [c["data"]["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    return "".join(c["data"]["text"] for c in chunks)


async def test_a_50_mb_output_arrives_intact_while_other_executions_keep_flowing(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tab = await Watcher.open(http, server, "editor", server.token(), channels="workflow:1")
    big = Execution(server.services.executions, "200", "1", push_ref="editor")
    small = Execution(server.services.executions, "201", "1")
    await big.started()
    await small.started()
    output = {"main": [items_of(50 * 1024 * 1024, "big")]}
    await big.node_before("Huge")

    async def tick() -> None:
        for i in range(200):
            await small.node_before(f"Tick {i}")
            await small.node_after(f"Tick {i}", output={"main": [[{"json": {"i": i}}]]})
            await asyncio.sleep(0.01)
        await small.finished()

    ticking = asyncio.create_task(tick())
    sent_at = time.monotonic()
    await big.node_after("Huge", output=output)
    await big.finished()
    await ticking

    def chunks() -> list[dict[str, Any]]:
        return [f for f in tab.frames if f["type"] == "executionOutputChunk"]

    await tab.until(lambda: chunks() and chunks()[-1]["data"]["final"], timeout=60)
    elapsed = time.monotonic() - sent_at
    marker = next(f for f in tab.on("execution:200") if f["type"] == "executionOutput")
    assert marker["data"]["delivery"] == "chunks"
    text = reassemble(chunks())
    assert len(text.encode()) == marker["data"]["bytes"]
    data = json.loads(text)
    assert data["nodeName"] == "Huge" and data["executionId"] == "200"
    assert data["data"]["data"] == output
    assert all(c["data"]["offset"] == marker["offset"] for c in chunks())
    # the other execution was not held behind the output: its events arrived in between
    positions = {id(f): i for i, f in enumerate(tab.frames)}
    first, last = positions[id(chunks()[0])], positions[id(chunks()[-1])]
    interleaved = [f for f in tab.frames[first:last] if f.get("channel") == "execution:201"]
    assert len(interleaved) > 10, f"only {len(interleaved)} small events in {elapsed:.1f}s"
    await tab.until(lambda: tab.finished("201") and tab.finished("200"))
    small_offsets = [f["offset"] for f in tab.on("execution:201")]
    assert small_offsets == list(range(1, small_offsets[-1] + 1))
    await tab.close()


async def test_a_slow_reader_costs_the_server_one_chunk_at_a_time(
    server_factory: Any, engine: dict[str, str], http: aiohttp.ClientSession
) -> None:
    server = await server_factory(output_chunk_bytes=64 * 1024, **engine)
    ws = await http.ws_connect(
        server.push_url("slow", server.token(), channels="workflow:1"), max_msg_size=0
    )
    assert json.loads((await ws.receive()).data)["type"] == "connected"
    execution = Execution(server.services.executions, "202", "1")
    await execution.started()
    await execution.node_before("Big")
    await execution.node_after("Big", output={"main": [items_of(8 * 1024 * 1024, "slow")]})
    # the client reads nothing for a while: the socket fills, and the server keeps at most
    # about one chunk for it
    session = server.node.session("slow")
    assert session is not None
    peak = 0
    for _ in range(40):
        await asyncio.sleep(0.025)
        peak = max(peak, session.queued[1])
    assert server.services.executions.transfers.active == 1
    assert peak <= 2 * 64 * 1024 + 4096, peak
    assert not session.closed
    # then it reads everything, intact
    chunks: list[dict[str, Any]] = []
    marker: dict[str, Any] = {}
    async with asyncio.timeout(30):
        while not (chunks and chunks[-1]["data"]["final"]):
            frame = json.loads((await ws.receive()).data)
            if frame["type"] == "executionOutputChunk":
                chunks.append(frame)
            elif frame["type"] == "executionOutput":
                marker = frame
    assert len(reassemble(chunks).encode()) == marker["data"]["bytes"]
    exposition = server.node.metrics.render().decode()
    assert f'livepush_output_chunks_total{{unit="chunks"}} {len(chunks)}.0' in exposition
    await ws.close()


async def test_outputs_over_the_push_limit_are_sent_by_reference_and_fetched_over_http(
    server_factory: Any, engine: dict[str, str], http: aiohttp.ClientSession
) -> None:
    server = await server_factory(
        output_inline_bytes=64 * 1024, output_push_limit=1024 * 1024, **engine
    )
    tab = await Watcher.open(http, server, "editor", server.token())
    execution = Execution(server.services.executions, "203", "1", push_ref="editor")
    await execution.started()
    await execution.node_before("Export")
    output = {"main": [items_of(3 * 1024 * 1024, "ref")]}
    await execution.node_after("Export", output=output)
    await execution.finished()
    await tab.until(lambda: tab.finished("203"))
    marker = next(f for f in tab.on("execution:203") if f["type"] == "executionOutput")
    assert marker["data"]["delivery"] == "reference"
    assert not [f for f in tab.frames if f["type"] == "executionOutputChunk"]
    url = server.url + marker["data"]["url"]
    token = server.token()  # grants workflow 1, which the execution belongs to
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200, await response.text()
        body = await response.read()
    assert len(body) == marker["data"]["bytes"]
    assert msgspec.json.decode(body)["data"]["data"] == output
    # the token may also come as a query parameter (what a browser link can carry)
    async with http.get(url + f"&token={token}") as response:
        assert response.status == 200
    # the snapshot refers to it
    reply = await tab.command({"type": "executionSnapshot", "executionId": "203", "id": 1})
    node = reply["data"]["snapshot"]["nodes"][0]
    assert node["output"] == {"url": marker["data"]["url"], "bytes": len(body)}
    # unknown node, expired output: a clear 404
    async with http.get(
        f"{server.url}/api/v1/executions/203/nodes/Nope/output",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "output_not_found"
    await tab.close()


async def test_outputs_over_the_maximum_are_refused_to_the_publisher(
    server_factory: Any, engine: dict[str, str], http: aiohttp.ClientSession
) -> None:
    server = await server_factory(
        output_inline_bytes=64 * 1024,
        output_push_limit=512 * 1024,
        output_max_bytes=1024 * 1024,
        **engine,
    )
    execution = Execution(server.services.executions, "204", "1")
    await execution.started()
    await execution.node_before("Too big")
    with pytest.raises(ProtocolError) as raised:
        await execution.node_after("Too big", output={"main": [items_of(2 * 1024 * 1024, "x")]})
    assert raised.value.code is ErrorCode.PAYLOAD_TOO_LARGE


async def test_chunked_outputs_and_snapshots_over_sse(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    token = server.token()
    async with http.get(
        server.push_url("sse-tab", token, channels="workflow:1"),
        headers={"Accept": "text/event-stream"},
    ) as response:
        assert response.status == 200
        reader = SseReader(response)
        assert (await reader.message_of_type("connected"))["data"]["pushRef"] == "sse-tab"
        execution = Execution(server.services.executions, "205", "1")
        await execution.started()
        await execution.node_before("Big")
        output = {"main": [items_of(3 * 1024 * 1024, "sse")]}
        await execution.node_after("Big", output=output)
        marker = await reader.message_of_type("executionOutput", timeout=10)
        chunks: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while not (chunks and chunks[-1]["data"]["final"]):
                chunks.append(await reader.message_of_type("executionOutputChunk"))
        text = reassemble(chunks)
        assert len(text.encode()) == marker["data"]["bytes"]
        assert json.loads(text)["data"]["data"] == output
        # catch-up over SSE: the command goes by POST, the events down the stream
        async with http.post(
            server.push_url("sse-tab", token),
            json={"type": "executionSnapshot", "executionId": "205", "id": 9},
        ) as posted:
            replies = await posted.json()
        assert replies[0]["type"] == "reply", replies
        assert replies[0]["data"]["snapshot"]["nodes"][0]["output"]["bytes"] == len(text.encode())
        assert replies[0]["data"]["alreadySubscribed"] is True
        await execution.finished()
        finished = await reader.message_of_type("executionFinished")
        assert finished["offset"] > replies[0]["data"]["offset"]
