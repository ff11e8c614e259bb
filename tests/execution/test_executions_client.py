"""Executions through the Python client against a real server, over both transports: a
watcher follows an execution, gets large outputs reassembled, and after a gap longer than the
history catches up from a snapshot with no gap and no duplicate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from livepush.client import Client, Message
from livepush.execution import Execution
from tests.conftest import RunningServer, ServerFactory
from tests.execution.test_outputs import items_of

pytestmark = pytest.mark.timeout(120)

TRANSPORTS = ["websocket", "sse"]


class Recorder:
    """Everything a client delivers on one execution channel, and its snapshots."""

    def __init__(self, client: Client, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.messages: list[Message] = []
        self.snapshots: list[dict[str, Any]] = []
        self.lost: list[Any] = []
        self.changed = asyncio.Event()
        self.snapshotted = asyncio.Event()
        client.on("*", self._on_message)
        client.on_recovery_failed(self._on_lost)

    def _on_message(self, message: Message) -> None:
        if message.channel == self.channel:
            self.messages.append(message)
            self.changed.set()

    async def _on_lost(self, channel: str, position: Any) -> None:
        if channel == self.channel:
            self.lost.append(position)
            # catch up: ask once, get the state and everything after it
            execution_id = channel.partition(":")[2]
            self.snapshots.append(await self.client.execution_snapshot(execution_id))
            self.snapshotted.set()
            self.changed.set()

    def types(self) -> list[str]:
        return [m.type for m in self.messages]

    async def until(self, check: Any, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_client_reassembles_large_outputs_transparently(
    server: RunningServer, transport: str
) -> None:
    client = Client(server.url, token=server.token(), channels=["workflow:1"], transport=transport)
    recorder = Recorder(client, "execution:400")
    async with client:
        execution = Execution(server.services.executions, "400", "1")
        await execution.started()
        await execution.node_before("Big")
        output = {"main": [items_of(6 * 1024 * 1024, transport)]}
        await execution.node_after("Big", output=output)
        await execution.finished()
        await recorder.until(lambda: "executionFinished" in recorder.types())
    assert recorder.types() == [
        "executionStarted",
        "nodeExecuteBefore",
        "nodeExecuteAfter",
        "nodeExecuteAfterData",
        "executionFinished",
    ]
    data = recorder.messages[3].data
    assert data["nodeName"] == "Big" and data["data"]["data"] == output
    assert [m.offset for m in recorder.messages] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_catch_up_after_a_long_gap_in_a_10000_event_execution(
    server_factory: ServerFactory, engine: dict[str, str], transport: str
) -> None:
    server = await server_factory(history_size=200, recovery_limit=200, **engine)
    client = Client(
        server.url,
        token=server.token("bob", workflows=["1"]),
        push_ref="watcher",
        channels=["workflow:1"],
        transport=transport,
        backoff_base=0.05,
        backoff_cap=0.2,
    )
    recorder = Recorder(client, "execution:401")
    nodes = 3333  # 1 + 3 events per node + 1: 10,001 events
    execution = Execution(server.services.executions, "401", "1", total_nodes=nodes)
    cut_at, resume_at = 1500, 2500
    disconnected = asyncio.Event()

    async def run() -> None:
        await execution.started()
        for index in range(nodes):
            if index == cut_at:
                # the watcher is cut off and cannot come back for 1000 nodes: more than the
                # history holds
                server.node.draining = True
                session = server.node.session("watcher")
                assert session is not None
                session.close(session.close_code or _restart(), "test: cut")
                disconnected.set()
            if index == resume_at:
                server.node.draining = False
                # the watcher comes back, finds the gap too long and catches up from a
                # snapshot while the execution goes on
                await asyncio.wait_for(recorder.snapshotted.wait(), 30)
            name = f"Node {index}"
            await execution.node_before(name)
            await execution.node_after(name, output={"main": [[{"json": {"n": index}}]]})
            if index % 50 == 0:
                await asyncio.sleep(0)  # let the server write
        await execution.finished()

    async with client:
        await run()
        await recorder.until(lambda: "executionFinished" in recorder.types())
    assert disconnected.is_set() and recorder.lost, "the gap should have exceeded the history"
    assert len(recorder.snapshots) == 1
    snapshot = recorder.snapshots[0]
    offset = snapshot["offset"]
    before = [m for m in recorder.messages if m.offset <= offset]
    after = [m for m in recorder.messages if m.offset > offset]
    # no duplicate; no gap after the snapshot
    offsets = [m.offset for m in recorder.messages]
    assert len(offsets) == len(set(offsets))
    assert [m.offset for m in after] == list(range(offset + 1, 10_002))
    # the snapshot plus what came before and after it account for every node
    done = {n["nodeName"] for n in snapshot["snapshot"]["nodes"] if n["status"] == "success"}
    done |= {m.data["nodeName"] for m in before + after if m.type == "nodeExecuteAfter"}
    assert done == {f"Node {i}" for i in range(nodes)}
    assert snapshot["snapshot"]["progress"]["totalNodes"] == nodes
    assert offset < 10_001 - 1000, "the snapshot was taken during the execution"
    assert after[-1].type == "executionFinished"


def _restart() -> Any:
    from livepush.protocol.errors import CloseCode

    return CloseCode.SERVICE_RESTART
