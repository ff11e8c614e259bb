"""Executions across a cluster: real `livepush serve --engine redis` processes on a real Redis;
a worker publishes through Redis (`livepush.publisher`) and through a node's HTTP API; the tab
that started the run, the workflow's watchers and late joiners on other nodes get every event,
large outputs chunked out of Redis, and snapshots from the state Redis keeps."""

from __future__ import annotations

import json
import uuid

import aiohttp
import pytest

from livepush.auth.tokens import mint_token
from livepush.execution import Execution
from livepush.publisher import HttpPublisher, Publisher
from tests.cluster.test_cluster import Watcher, cluster
from tests.conftest import API_KEY, SECRET, redis_url

pytestmark = pytest.mark.timeout(90)


def big_items(total: int) -> list[dict[str, object]]:
    return [{"json": {"i": i, "text": "ü" * 100 + "y" * 800}} for i in range(total // 1000)]


async def test_executions_reach_followers_on_every_node_with_outputs_and_snapshots() -> None:
    url = redis_url()
    prefix = f"lpcluster-{uuid.uuid4().hex[:8]}"
    async with (
        cluster(2, url, prefix) as (a, b),
        aiohttp.ClientSession() as http,
        Publisher(url, prefix=prefix) as worker,
    ):
        tab = await Watcher.connect(http, a, "editor", "system")
        watcher = await Watcher.connect(http, b, "watcher", "workflow:9")
        execution = Execution(worker, "500", "9", push_ref="editor", total_nodes=2)
        await execution.started()
        await execution.node_before("Small")
        await execution.node_after("Small", output={"main": [[{"json": {"ok": True}}]]})
        await execution.node_before("Big", source=["Small"])
        output = {"main": [big_items(3 * 1024 * 1024)]}
        await execution.node_after("Big", output=output)
        await execution.finished()
        expected = [
            "executionStarted",
            "nodeExecuteBefore",
            "nodeExecuteAfter",
            "nodeExecuteAfterData",
            "nodeExecuteBefore",
            "nodeExecuteAfter",
            "executionOutput",
            "executionFinished",
        ]
        for who in (tab, watcher):
            await who.wait(
                lambda w=who: (
                    len(w.on("execution:500")) == len(expected)
                    and w.of_type("executionOutputChunk")
                    and w.of_type("executionOutputChunk")[-1]["data"]["final"]
                )
            )
            events = who.on("execution:500")
            assert [m["type"] for m in events] == expected
            assert [m["offset"] for m in events] == list(range(1, 9))
            chunks = who.of_type("executionOutputChunk")
            assert [c["data"]["index"] for c in chunks] == list(range(len(chunks)))
            text = "".join(c["data"]["text"] for c in chunks)
            assert len(text.encode()) == events[6]["data"]["bytes"]
            assert json.loads(text)["data"]["data"] == output
        # a late joiner on the other node catches up from the state in Redis
        late = await Watcher.connect(http, a, "late", "system")
        await late.ws.send_str(
            json.dumps({"type": "executionSnapshot", "executionId": "500", "id": 1})
        )
        await late.wait(lambda: [m for m in late.messages if m.get("id") == 1])
        reply = next(m for m in late.messages if m.get("id") == 1)
        snapshot = reply["data"]["snapshot"]
        assert reply["data"]["offset"] == 8 and snapshot["status"] == "success"
        assert [n["nodeName"] for n in snapshot["nodes"]] == ["Small", "Big"]
        big = snapshot["nodes"][1]["output"]
        token = mint_token(SECRET, "carol", workflows=["9"])
        async with http.get(
            b.url + big["url"], headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200
            assert len(await response.read()) == big["bytes"]
        # and the same through a node's HTTP API, from a process without Redis access
        async with HttpPublisher(b.url, API_KEY) as api:
            second = Execution(api, "501", "9", push_ref="editor")
            await second.started()
            await second.finished("error")
        await tab.wait(lambda: len(tab.on("execution:501")) == 2)
        await watcher.wait(lambda: len(watcher.on("execution:501")) == 2)
        for who in (tab, watcher, late):
            await who.close()
