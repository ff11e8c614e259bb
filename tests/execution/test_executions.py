"""Execution progress against a real server: who receives an execution's events (the tab that
started it, the workflow's watchers, explicit subscribers, nobody else), complete and in order,
whenever they join; catch-up from a snapshot; sequence numbers; node errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from livepush.execution import Execution
from tests.conftest import API_KEY, RunningServer
from tests.integration.helpers import receive_json

pytestmark = pytest.mark.timeout(60)


class Watcher:
    """A raw WebSocket connection that records every frame, by channel."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.replies: dict[Any, dict[str, Any]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self._changed = asyncio.Event()

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, server: RunningServer, ref: str, token: str, **params: str
    ) -> Watcher:
        ws = await http.ws_connect(server.push_url(ref, token, **params), max_msg_size=0)
        first = await receive_json(ws)
        assert first["type"] == "connected", first
        return cls(ws)

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if frame["type"] in ("reply", "error") and "id" in frame:
                self.replies[frame["id"]] = frame
            else:
                self.frames.append(frame)
            self._changed.set()

    async def command(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.ws.send_str(json.dumps(body))
        return await self.until(lambda: self.replies.get(body["id"]))

    async def until(self, check: Any, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if result:
                    return result
                self._changed.clear()
                await self._changed.wait()

    def on(self, channel: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("channel") == channel]

    def types(self, channel: str) -> list[str]:
        return [f["type"] for f in self.on(channel)]

    def finished(self, execution_id: str) -> bool:
        return "executionFinished" in self.types(f"execution:{execution_id}")

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def offsets(frames: list[dict[str, Any]]) -> list[int]:
    return [f["offset"] for f in frames if "offset" in f]


async def run_execution(
    server: RunningServer,
    execution_id: str,
    workflow_id: str,
    *,
    push_ref: str | None = "editor",
    nodes: int = 3,
    pause: asyncio.Event | None = None,
    paused: asyncio.Event | None = None,
) -> Execution:
    execution = Execution(
        server.services.executions,
        execution_id,
        workflow_id,
        push_ref=push_ref,
        total_nodes=nodes,
        workflow_name="Test",
    )
    await execution.started()
    for index in range(nodes):
        name = f"Node {index}"
        await execution.node_before(name)
        await execution.node_after(name, output={"main": [[{"json": {"index": index}}]]})
        if pause is not None and paused is not None and index == nodes // 2:
            paused.set()
            await pause.wait()
    await execution.finished("success")
    return execution


EXPECTED_TYPES = (
    ["executionStarted"]
    + ["nodeExecuteBefore", "nodeExecuteAfter", "nodeExecuteAfterData"] * 3
    + ["executionFinished"]
)


async def test_tab_and_workflow_watchers_follow_from_the_first_event(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tab = await Watcher.open(http, server, "editor", server.token())
    watcher = await Watcher.open(
        http, server, "bob-tab", server.token("bob"), channels="workflow:1"
    )
    await run_execution(server, "100", "1")
    for who in (tab, watcher):
        await who.until(lambda w=who: w.finished("100"))
        assert who.types("execution:100") == EXPECTED_TYPES
        assert offsets(who.on("execution:100")) == list(range(1, 12))
        # the stream ended by itself after the execution finished
        await who.until(
            lambda w=who: any(
                f["type"] == "unsubscribed" and f["data"]["channel"] == "execution:100"
                for f in w.frames
            )
        )
    notices = [f for f in tab.on("push:editor") if f["type"] == "executionStream"]
    assert [n["data"]["executionId"] for n in notices] == ["100"]
    assert [f["type"] for f in watcher.on("workflow:1")] == ["executionStream"]
    # n8n's sequence numbers: set by livepush (the events had none), increasing
    before = [f for f in tab.on("execution:100") if f["type"] == "nodeExecuteBefore"]
    assert [f["data"]["sequenceNumber"] for f in before] == [f["offset"] for f in before]
    await tab.close()
    await watcher.close()


async def test_watchers_of_other_workflows_and_unauthorized_users_receive_nothing(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    other = await Watcher.open(
        http, server, "carol-tab", server.token("carol", workflows=["2"]), channels="workflow:2"
    )
    nobody = await Watcher.open(http, server, "dave-tab", server.token("dave", workflows=[]))
    refused = await nobody.command({"type": "subscribe", "channel": "execution:101", "id": 1})
    assert refused["type"] == "error" and refused["data"]["code"] == "forbidden"
    tab = await Watcher.open(http, server, "editor", server.token())
    await run_execution(server, "101", "1")
    await tab.until(lambda: tab.finished("101"))
    snapshot = await nobody.command({"type": "executionSnapshot", "executionId": "101", "id": 2})
    assert snapshot["type"] == "error" and snapshot["data"]["code"] == "forbidden"
    await asyncio.sleep(0.2)
    for who in (other, nobody):
        assert not [f for f in who.frames if "execution" in f["type"].lower()], who.frames
        assert not who.on("execution:101")
    # nor over HTTP, with a token that does not grant the execution or its workflow
    dave = server.token("dave", workflows=[])
    async with http.get(
        f"{server.url}/api/v1/executions/101", headers={"Authorization": f"Bearer {dave}"}
    ) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    async with http.get(
        f"{server.url}/api/v1/executions/101/nodes/Node%200/output",
        headers={"Authorization": f"Bearer {dave}"},
    ) as response:
        assert response.status == 403
    for who in (other, nobody, tab):
        await who.close()


async def test_watchers_joining_midway_and_after_the_end_catch_up_from_a_snapshot(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    full = await Watcher.open(http, server, "editor", server.token())
    pause, paused = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        run_execution(server, "102", "1", nodes=6, pause=pause, paused=paused)
    )
    await paused.wait()
    late = await Watcher.open(
        http, server, "late-tab", server.token("erin", workflows=[], executions=["102"])
    )
    reply = await late.command({"type": "executionSnapshot", "executionId": "102", "id": 1})
    assert reply["type"] == "reply", reply
    data = reply["data"]
    snapshot = data["snapshot"]
    assert data["channel"] == "execution:102" and snapshot["status"] == "running"
    assert snapshot["progress"]["completedNodes"] == 4
    assert snapshot["progress"]["totalNodes"] == 6
    assert [n["nodeName"] for n in snapshot["nodes"]] == [f"Node {i}" for i in range(4)]
    assert snapshot["nodes"][0]["output"]["inline"]["data"]["data"]["main"] == [
        [{"json": {"index": 0}}]
    ]
    pause.set()
    await running
    await late.until(lambda: late.finished("102"))
    await full.until(lambda: full.finished("102"))
    # no gap, no duplicate: the snapshot's offset, then every event after it
    after = offsets(late.on("execution:102"))
    assert after == list(range(data["offset"] + 1, offsets(full.on("execution:102"))[-1] + 1))

    # after the end: the snapshot says finished (never "executing" forever)
    ended = await Watcher.open(http, server, "ended-tab", server.token("frank", workflows=["1"]))
    reply = await ended.command({"type": "executionSnapshot", "executionId": "102", "id": 1})
    snapshot = reply["data"]["snapshot"]
    assert snapshot["status"] == "success" and snapshot["finished"] is True
    assert snapshot["progress"] == {
        "completedNodes": 6,
        "runningNodes": 0,
        "failedNodes": 0,
        "totalNodes": 6,
    }
    assert reply["data"]["offset"] == offsets(full.on("execution:102"))[-1]
    missing = await ended.command({"type": "executionSnapshot", "executionId": "nope", "id": 2})
    assert missing["type"] == "error"
    assert missing["data"]["code"] in ("execution_not_found", "forbidden")
    # the same snapshot over HTTP, with the API key
    async with http.get(
        f"{server.url}/api/v1/executions/102", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as response:
        assert response.status == 200
        assert (await response.json())["snapshot"]["status"] == "success"
    for who in (full, late, ended):
        await who.close()


async def test_node_errors_reach_watchers_with_n8ns_shape_and_in_the_snapshot(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tab = await Watcher.open(http, server, "editor", server.token())
    execution = Execution(server.services.executions, "103", "1", push_ref="editor", total_nodes=2)
    await execution.started()
    await execution.node_before("Webhook")
    await execution.node_after("Webhook", output={"main": [[{"json": {}}]]})
    await execution.node_before("HTTP Request", source=["Webhook"])
    await tab.until(lambda: "nodeExecuteBefore" in tab.types("execution:103")[3:])
    await execution.node_after(
        "HTTP Request",
        error={"message": "404 Not Found", "description": "The resource was not found"},
    )
    await tab.until(lambda: tab.types("execution:103").count("nodeExecuteAfter") == 2)
    after = [f for f in tab.on("execution:103") if f["type"] == "nodeExecuteAfter"][-1]
    error = after["data"]["data"]["error"]
    assert error == {
        "node": {"name": "HTTP Request"},
        "message": "404 Not Found",
        "description": "The resource was not found",
    }
    assert after["data"]["data"]["executionStatus"] == "error"
    assert after["data"]["progress"] == {"nodeIndex": 2, "totalNodes": 2}
    await execution.finished("error")
    reply = await tab.command({"type": "executionSnapshot", "executionId": "103", "id": 1})
    snapshot = reply["data"]["snapshot"]
    assert snapshot["status"] == "error"
    failed = snapshot["nodes"][1]
    assert failed["status"] == "error" and failed["error"]["message"] == "404 Not Found"
    assert snapshot["progress"]["failedNodes"] == 1
    await tab.close()


async def test_publishing_over_http_validates_before_anything_is_published(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{server.url}/api/v1/executions/events"
    good = {
        "type": "executionStarted",
        "data": {
            "executionId": "104",
            "mode": "manual",
            "startedAt": "2026-11-25T10:00:00.000Z",
            "workflowId": "1",
            "flattedRunData": "[{}]",
        },
        "pushRef": "editor",
    }
    bad = {"type": "nodeExecuteBefore", "data": {"executionId": "104", "nodeName": "X"}}
    async with http.post(url, json={"events": [good, bad]}, headers=headers) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["code"] == "invalid_message"
        assert error["message"].startswith("events[1]: ") and "data" in error["message"]
    assert await server.services.executions.snapshot("104") is None
    async with http.post(url, json={"events": [good]}, headers=headers) as response:
        assert response.status == 200
        published = (await response.json())["publications"]
    taken = await server.services.executions.snapshot("104")
    assert taken is not None
    assert published == [{"channel": "execution:104", "offset": 1, "epoch": taken[1].epoch}]
    async with http.post(url, json=good, headers={"Authorization": "Bearer nope"}) as response:
        assert response.status == 401


async def test_the_publish_api_checks_execution_events_before_publishing_a_batch(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    started = {
        "type": "executionStarted",
        "channel": "execution:105",
        "data": {
            "executionId": "105",
            "mode": "manual",
            "startedAt": "2026-11-25T10:00:00.000Z",
            "workflowId": "1",
            "flattedRunData": "[{}]",
        },
    }
    broken = {"type": "executionFinished", "channel": "push:editor", "data": {"status": "x"}}
    status, reply = await server.publish(http, {"messages": [started, broken]})
    assert status == 400 and reply["error"]["code"] == "invalid_message"
    assert reply["error"]["message"].startswith("messages[1]: ")
    assert await server.services.executions.snapshot("105") is None
    status, reply = await server.publish(http, {"messages": [started]})
    assert status == 200 and reply["messages"][0]["publications"][0]["offset"] == 1
    assert await server.services.executions.snapshot("105") is not None


async def test_many_followers_of_a_new_execution_share_one_history_read(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    watchers = [
        await Watcher.open(http, server, f"w{i}", server.token(f"u{i}"), channels="workflow:1")
        for i in range(20)
    ]
    broker = server.node.broker
    reads: list[str] = []
    recover = broker.recover

    async def counting(channel: str, since: Any, limit: int) -> Any:
        reads.append(channel)
        return await recover(channel, since, limit)

    broker.recover = counting  # type: ignore[method-assign]
    try:
        await run_execution(server, "106", "1", push_ref=None)
        for watcher in watchers:
            await watcher.until(lambda w=watcher: w.finished("106"))
            assert offsets(watcher.on("execution:106")) == list(range(1, 12))
    finally:
        broker.recover = recover  # type: ignore[method-assign]
    # they follow in one batch: one subscription, one history read
    assert reads.count("execution:106") == 1, reads
    # followers are not in the execution's presence (they watch the workflow)
    assert (await server.node.subscriptions.members("execution:106"))["connections"] == []
    for watcher in watchers:
        await watcher.close()


async def test_an_execution_event_addressed_to_another_executions_channel_is_refused(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    event = {
        "type": "executionRecovered",
        "channel": "execution:107",
        "data": {"executionId": "108"},
    }
    status, reply = await server.publish(http, event)
    assert status == 400 and reply["error"]["code"] == "invalid_message"
    assert "execution:108" in reply["error"]["message"]
    assert await server.services.executions.snapshot("108") is None


async def test_idle_connections_keep_no_release_floors(
    server: RunningServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The floors that drop late duplicates (remote brokers only) are gone after a while, so
    an idle connection costs no more memory than before."""
    import livepush.core.session as session_module

    monkeypatch.setattr(session_module, "FLOOR_SECONDS", 0.2)
    watcher = await Watcher.open(http, server, "idle", server.token(), channels="workflow:1")
    session = server.node.session("idle")
    assert session is not None
    remote = server.node.broker.remote
    assert (session._floors is not None) is remote
    await asyncio.sleep(0.3)
    assert session._floors is None
    await watcher.close()
