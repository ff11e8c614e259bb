"""`livepush demo` run as a real process against a real server, watched over WebSocket by the
tab that "started" the executions and by a watcher of the workflow: every execution arrives
complete and in order."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from livepush.demo.executions import DemoOptions, plan_execution
from tests.client.support import eventually
from tests.conftest import API_KEY, RunningServer

pytestmark = pytest.mark.timeout(60)

_EVENTS_LINE = re.compile(r"^(\S+): (\d+) events$", re.MULTILINE)


@dataclass
class Watcher:
    """One WebSocket connection and what it received, per channel."""

    ws: aiohttp.ClientWebSocketResponse
    notices: list[dict[str, Any]] = field(default_factory=list)
    #: channel -> the publications received on it, in arrival order
    channels: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    chunks: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    unsubscribed: list[dict[str, Any]] = field(default_factory=list)
    #: channel of each notice, at the time it arrived: how many events had come before it
    seen_before_notice: dict[str, int] = field(default_factory=dict)

    def finished(self) -> set[str]:
        return {
            channel.partition(":")[2]
            for channel, messages in self.channels.items()
            if channel.startswith("execution:")
            and messages
            and messages[-1]["type"] == "executionFinished"
        }

    async def read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            body = json.loads(message.data)
            kind = body["type"]
            if kind == "executionStream":
                self.notices.append(body)
                channel = body["data"]["channel"]
                self.seen_before_notice.setdefault(channel, len(self.channels[channel]))
            elif kind == "executionOutputChunk":
                self.chunks[body["data"]["outputId"]].append(body["data"])
            elif kind == "unsubscribed":
                self.unsubscribed.append(body["data"])
            elif "offset" in body and body.get("channel", "").startswith("execution:"):
                self.channels[body["channel"]].append(body)


async def connect(
    server: RunningServer, http: aiohttp.ClientSession, push_ref: str, **params: str
) -> tuple[Watcher, asyncio.Task[None]]:
    ws = await http.ws_connect(server.push_url(push_ref, server.token(), **params))
    hello = json.loads((await ws.receive()).data)
    assert hello["type"] == "connected", hello
    watcher = Watcher(ws)
    return watcher, asyncio.create_task(watcher.read())


async def run_demo(
    server: RunningServer, *args: str, api_key: str = API_KEY
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livepush.cli",
        "demo",
        "--url",
        server.url,
        "--api-key",
        api_key,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 45)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def check_complete(watcher: Watcher, published: dict[str, int], who: str) -> None:
    """Each execution: a notice, then offsets 1..N with no gap, started first, finished last."""
    noticed = {n["data"]["executionId"]: n["data"] for n in watcher.notices}
    assert set(noticed) == set(published), who
    assert watcher.finished() == set(published), who
    for execution_id, count in published.items():
        channel = f"execution:{execution_id}"
        notice = noticed[execution_id]
        assert notice["channel"] == channel
        assert notice["workflowId"] == "1"
        # the notice comes first: the events before it are the ones it catches up on
        assert watcher.seen_before_notice[channel] == 0, (who, execution_id)
        messages = watcher.channels[channel]
        offsets = [m["offset"] for m in messages]
        assert offsets == list(range(1, count + 1)), (who, execution_id, offsets)
        assert {m["epoch"] for m in messages} == {notice["epoch"]}
        types = [m["type"] for m in messages]
        assert types[0] == "executionStarted", (who, types)
        assert types[-1] == "executionFinished", (who, types)
        assert "executionStarted" not in types[1:] and "executionFinished" not in types[:-1]
        assert all(
            m["data"]["executionId"] == execution_id
            for m in messages
            if "executionId" in m["data"] and not m["type"].startswith("subworkflow")
        )
        nodes_before = [m["data"]["nodeName"] for m in messages if m["type"] == "nodeExecuteBefore"]
        nodes_after = [m["data"]["nodeName"] for m in messages if m["type"] == "nodeExecuteAfter"]
        assert nodes_before == nodes_after, (who, execution_id)
    # every followed execution ended by itself
    ended = {u["channel"] for u in watcher.unsubscribed if u["code"] == "execution_finished"}
    assert ended == {f"execution:{e}" for e in published}, who


async def test_demo_executions_arrive_complete_and_in_order(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tab, tab_task = await connect(server, http, "tab1")
    watcher, watcher_task = await connect(server, http, "other", channels="workflow:1")
    try:
        code, stdout, stderr = await run_demo(
            server,
            "--push-ref", "tab1",
            "--workflow-id", "1",
            "--executions", "8",
            "--nodes", "6",
            "--item-bytes", "3000",
            "--delay-ms", "0-5",
            "--wait-ms", "10-30",
            "--error-rate", "0.3",
            "--wait-rate", "0.3",
            "--subworkflow-rate", "0.3",
            "--seed", "7",
            "--execution-prefix", "t1-",
            "--verbose",
        )  # fmt: skip
        assert code == 0, stderr
        assert re.match(r"livepush demo: 8 executions \(.*\), \d+ events, .* s \(", stdout)
        published = {m[0]: int(m[1]) for m in _EVENTS_LINE.findall(stderr)}
        assert set(published) == {f"t1-{i}" for i in range(1, 9)}
        await eventually(
            lambda: (
                tab.finished() == watcher.finished() == set(published)
                and len(tab.unsubscribed) == len(watcher.unsubscribed) == 8
            ),
            10,
            "every execution finished on both connections",
        )
        check_complete(tab, published, "tab")
        check_complete(watcher, published, "workflow watcher")
        # the mix the options asked for (seed 7): errors, waits and sub-workflows all occur
        types = {m["type"] for msgs in tab.channels.values() for m in msgs}
        assert {"executionWaiting", "subworkflowExecutionStarted", "subworkflowNodeProgress",
                "subworkflowExecutionFinished", "nodeExecuteAfterData"} <= types  # fmt: skip
        finals = [msgs[-1]["data"]["status"] for msgs in tab.channels.values()]
        assert "error" in finals and "success" in finals
        errors = [
            m["data"]["data"]["error"]
            for msgs in tab.channels.values()
            for m in msgs
            if m["type"] == "nodeExecuteAfter" and "error" in m["data"]["data"]
        ]
        assert errors and all({"message", "node"} <= set(e) for e in errors)
        assert all(e["node"]["name"] and e["node"]["type"] for e in errors)
        # nothing is delivered twice to the workflow watcher (notice on workflow:1 only)
        assert len(watcher.notices) == 8
    finally:
        await tab.ws.close()
        await watcher.ws.close()
        tab_task.cancel()
        watcher_task.cancel()


async def test_demo_outputs_have_the_requested_size(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tab, task = await connect(server, http, "tab2")
    try:
        code, _, stderr = await run_demo(
            server,
            "--push-ref", "tab2",
            "--workflow-id", "1",
            "--nodes", "3",
            "--item-bytes", "200000",
            "--delay-ms", "0",
            "--error-rate", "0",
            "--wait-rate", "0",
            "--subworkflow-rate", "0",
        )  # fmt: skip
        assert code == 0, stderr
        await eventually(lambda: bool(tab.finished()), 10, "the execution finished")
        (messages,) = tab.channels.values()
        assert [m["offset"] for m in messages] == list(range(1, 3 * 3 + 3))
        outputs = [m for m in messages if m["type"] == "nodeExecuteAfterData"]
        assert len(outputs) == 3
        for m in outputs:
            size = len(json.dumps(m["data"]["data"]["data"], separators=(",", ":")))
            assert 190_000 <= size <= 210_000, size
            items = m["data"]["data"]["data"]["main"]
            counts = m["data"]["itemCountByConnectionType"]["main"]
            assert counts == [len(branch) for branch in items]
    finally:
        await tab.ws.close()
        task.cancel()


async def test_demo_with_a_bad_api_key_exits_non_zero(server: RunningServer) -> None:
    code, stdout, stderr = await run_demo(
        server, "--push-ref", "tab3", "--workflow-id", "1", api_key="wrong-key"
    )
    assert code == 1
    assert "invalid_api_key" in stderr and "HTTP 401" in stderr, stderr
    assert stdout == ""


async def test_demo_without_a_server_exits_non_zero() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livepush.cli", "demo", "--url", "http://127.0.0.1:9",
        "--api-key", "k", "--push-ref", "tab4", "--workflow-id", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert b"cannot reach the server" in stderr


def test_plans_are_deterministic_with_a_seed() -> None:
    options = DemoOptions("http://x", "k", "tab", "1", nodes=12, executions=50, seed=5)
    first = [plan_execution(options, i, f"e{i}") for i in range(50)]
    again = [plan_execution(options, i, f"e{i}") for i in range(50)]
    assert first == again
    assert {p.status for p in first} == {"success", "error"}
    assert any(n.wait for p in first for n in p.nodes)
    assert any(n.subworkflow_nodes for p in first for n in p.nodes)
    names = [n.name for n in first[0].nodes]
    assert len(set(names)) == len(names)  # n8n's node names are unique in a workflow
