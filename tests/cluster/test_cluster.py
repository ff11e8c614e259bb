"""Fault tests of a livepush cluster: real `livepush serve --engine redis` processes on a real
Redis, real WebSocket clients, all on loopback, each bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from livepush.auth.tokens import mint_token
from livepush.publisher import Publisher
from tests.conftest import API_KEY, SECRET, redis_url
from tests.integration.process import ServerProcess, serve_process
from tests.integration.redis_process import RedisProcess


@contextlib.asynccontextmanager
async def cluster(
    size: int, url: str, prefix: str | None = None, **env: str
) -> AsyncIterator[list[ServerProcess]]:
    """`size` nodes on one Redis under one key prefix."""
    environ = {
        "LIVEPUSH_ENGINE": "redis",
        "LIVEPUSH_REDIS_URL": url,
        "LIVEPUSH_REDIS_PREFIX": prefix or f"lpcluster-{uuid.uuid4().hex[:8]}",
        "LIVEPUSH_JWT_SECRET": SECRET,
        "LIVEPUSH_API_KEY": API_KEY,
        **env,
    }
    async with contextlib.AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(serve_process(env=environ)) for _ in range(size)]
        try:
            yield nodes
        except BaseException:
            for index, node in enumerate(nodes):  # shown by pytest with the failure
                print(f"--- node {index} ({node.url}):\n{node.banner}{''.join(node.output)}")
            raise


class Watcher:
    """A WebSocket client that records every message it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls, http: aiohttp.ClientSession, node: ServerProcess, push_ref: str, channels: str
    ) -> Watcher:
        token = mint_token(SECRET, "alice", workflows=["*"])
        ws = await http.ws_connect(
            f"{node.url}/rest/push?pushRef={push_ref}&token={token}&channels={channels}"
        )
        watcher = cls(ws)
        await watcher.wait(lambda: watcher.of_type("connected"))
        return watcher

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))
        self.closed.set()

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == message_type]

    def on(self, channel: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("channel") == channel]

    async def wait(self, condition: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - polls what the reader task collected
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.ws.close()
        await self._task


async def publish(http: aiohttp.ClientSession, node: ServerProcess, body: Any) -> Any:
    async with http.post(
        f"{node.url}/api/v1/publish", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as response:
        return response.status, await response.json()


async def ready(http: aiohttp.ClientSession, node: ServerProcess) -> int:
    async with http.get(f"{node.url}/readyz") as response:
        return response.status


async def test_three_nodes_and_an_external_publisher_one_order_everywhere() -> None:
    """Clients on every node; publications from every node's API and from the external
    publisher, concurrently: every client gets every publication once, in one order."""
    url = redis_url()
    prefix = f"lpcluster-{uuid.uuid4().hex[:8]}"
    channel = "workflow:shared"
    async with (
        cluster(3, url, prefix) as nodes,
        aiohttp.ClientSession() as http,
        Publisher(url, prefix=prefix) as external,
    ):
        watchers = [await Watcher.connect(http, nodes[i % 3], f"tab{i}", channel) for i in range(6)]

        async def from_node(index: int) -> None:
            for n in range(50):
                status, _ = await publish(
                    http,
                    nodes[index],
                    {"type": "tick", "data": {"src": index, "n": n}, "channel": channel},
                )
                assert status == 200

        async def from_worker() -> None:
            for n in range(50):
                await external.publish(channel, "tick", {"src": "worker", "n": n})

        await asyncio.gather(from_node(0), from_node(1), from_node(2), from_worker())
        for watcher in watchers:
            await watcher.wait(lambda w=watcher: len(w.on(channel)) == 200)
        reference = [(m["offset"], m["data"]) for m in watchers[0].on(channel)]
        assert [offset for offset, _ in reference] == list(range(1, 201))
        for watcher in watchers[1:]:
            assert [(m["offset"], m["data"]) for m in watcher.on(channel)] == reference
        # every source's messages in the order it published them
        for source in (0, 1, 2, "worker"):
            ns = [data["n"] for _, data in reference if data["src"] == source]
            assert ns == list(range(50))
        # routing to one tab and to a user crosses nodes too
        await external.to_push_ref("tab1", "hello", {"to": "tab1"})
        status, _ = await publish(http, nodes[0], {"type": "hi", "data": {}, "userIds": ["alice"]})
        assert status == 200
        await watchers[1].wait(lambda: watchers[1].of_type("hello") and watchers[1].of_type("hi"))
        await watchers[4].wait(lambda: watchers[4].of_type("hi"))
        assert not watchers[4].of_type("hello")
        for watcher in watchers:
            await watcher.close()


async def test_redis_restart_without_persistence(private_redis: RedisProcess) -> None:
    """Redis restarts with an empty dataset: nodes report not-ready meanwhile and keep their
    clients, come back by themselves, tell the clients `channelReset` (they must refetch),
    and new publications flow."""
    channel = "workflow:restart"
    async with (
        cluster(2, private_redis.url) as (a, b),
        aiohttp.ClientSession() as http,
    ):
        watcher = await Watcher.connect(http, a, "tab", channel)
        status, body = await publish(http, b, {"type": "x", "data": {"n": 1}, "channel": channel})
        assert status == 200
        first_epoch = body["publications"][0]["epoch"]
        await watcher.wait(lambda: len(watcher.on(channel)) == 1)

        await private_redis.kill()
        for node in (a, b):
            await _until_status(http, node, 503)
        status, body = await publish(http, b, {"type": "x", "data": {"n": 2}, "channel": channel})
        assert status == 503 and body["error"]["code"] == "engine_unavailable"
        assert not watcher.closed.is_set()  # the client stays connected

        await private_redis.start()
        for node in (a, b):
            await _until_status(http, node, 200)
        await watcher.wait(lambda: watcher.of_type("channelReset"))
        reset = next(m for m in watcher.of_type("channelReset") if m["data"]["channel"] == channel)
        assert reset["data"]["epoch"] != first_epoch
        status, body = await publish(http, b, {"type": "x", "data": {"n": 3}, "channel": channel})
        assert status == 200
        await watcher.wait(lambda: watcher.on(channel)[-1]["data"] == {"n": 3})
        assert watcher.on(channel)[-1]["epoch"] == reset["data"]["epoch"]
        await watcher.close()


async def _until_status(
    http: aiohttp.ClientSession, node: ServerProcess, status: int, timeout: float = 15.0
) -> None:
    async with asyncio.timeout(timeout):
        while await ready(http, node) != status:  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(0.05)


async def presence_users(http: aiohttp.ClientSession, node: ServerProcess, channel: str) -> Any:
    async with http.get(
        f"{node.url}/api/v1/presence",
        params={"channel": channel},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.status == 200
        return (await response.json())["connections"]


async def test_presence_of_a_killed_node_expires() -> None:
    """Presence is cluster-wide; a node killed with SIGKILL stops counting its connections
    once `presence_ttl` has passed, while the surviving node's stay."""
    channel = "workflow:presence"
    async with (
        cluster(2, redis_url(), LIVEPUSH_PRESENCE_TTL="1.5") as (a, b),
        aiohttp.ClientSession() as http,
    ):
        on_a = await Watcher.connect(http, a, "tab-a", channel)
        on_b = await Watcher.connect(http, b, "tab-b", channel)
        refs = {c["pushRef"] for c in await presence_users(http, a, channel)}
        assert refs == {"tab-a", "tab-b"}
        # still there after several renewals (longer than the TTL)
        await asyncio.sleep(2.0)
        refs = {c["pushRef"] for c in await presence_users(http, b, channel)}
        assert refs == {"tab-a", "tab-b"}
        b.kill()
        await on_b.closed.wait()
        # gone within the TTL (plus slack for a loaded machine)
        async with asyncio.timeout(3.0):
            while len(await presence_users(http, a, channel)) != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert [c["pushRef"] for c in await presence_users(http, a, channel)] == ["tab-a"]
        await on_a.close()


async def test_nodes_on_a_redis_cluster(redis_cluster: Any) -> None:
    """Two nodes on a three-primary Redis Cluster (sharded pub/sub), clients on both,
    channels spread over the primaries, publications from both nodes and an external
    publisher."""
    prefix = f"lpcluster-{uuid.uuid4().hex[:8]}"
    channels = [f"workflow:c{i}" for i in range(6)]
    async with (
        cluster(2, redis_cluster.url, prefix, LIVEPUSH_REDIS_CLUSTER="true") as nodes,
        aiohttp.ClientSession() as http,
        Publisher(redis_cluster.url, prefix=prefix, cluster=True) as external,
    ):
        watchers = [
            await Watcher.connect(http, nodes[i % 2], f"tab{i}", ",".join(channels))
            for i in range(4)
        ]
        for n in range(20):
            for index, channel in enumerate(channels):
                if (n + index) % 3 == 2:
                    await external.publish(channel, "tick", {"n": n})
                else:
                    body = {"type": "tick", "data": {"n": n}, "channel": channel}
                    status, _ = await publish(http, nodes[(n + index) % 2], body)
                    assert status == 200
        for watcher in watchers:
            await watcher.wait(lambda w=watcher: all(len(w.on(c)) == 20 for c in channels))
            for channel in channels:
                assert [m["offset"] for m in watcher.on(channel)] == list(range(1, 21))
                assert [m["data"]["n"] for m in watcher.on(channel)] == list(range(20))
        for watcher in watchers:
            await watcher.close()
        for node in nodes:  # no pub/sub connection failed along the way
            assert "connection lost" not in node.banner + "".join(node.output)


async def test_sse_commands_posted_to_another_node() -> None:
    """No sticky sessions for SSE either: the stream is on node A, the command POSTs reach
    node B, which runs them on A through Redis and answers with A's replies."""
    from tests.integration.helpers import SseReader

    url = redis_url()
    async with cluster(2, url) as (a, b), aiohttp.ClientSession() as http:
        token = mint_token(SECRET, "alice", workflows=["*"])
        stream = await http.get(
            f"{a.url}/rest/push?pushRef=sse1&token={token}",
            headers={"Accept": "text/event-stream"},
        )
        reader = SseReader(stream)
        assert (await reader.message_of_type("connected"))["data"]["pushRef"] == "sse1"

        async def post(node: ServerProcess, push_ref: str, body: Any, tok: str = token) -> Any:
            async with http.post(
                f"{node.url}/rest/push?pushRef={push_ref}&token={tok}", json=body
            ) as response:
                return response.status, await response.json()

        status, replies = await post(
            b,
            "sse1",
            [{"type": "subscribe", "channel": "workflow:7", "id": 1}, {"type": "ping", "id": 2}],
        )
        assert status == 200
        assert [r["id"] for r in replies] == [1, 2] and replies[0]["data"][
            "channel"
        ] == "workflow:7"
        await publish(http, b, {"type": "hello", "data": {"n": 1}, "channel": "workflow:7"})
        assert (await reader.message_of_type("hello"))["data"] == {"n": 1}
        # nobody has this pushRef: every node says so, quickly
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, body = await post(b, "nobody", {"type": "ping", "id": 1})
        assert status == 404 and body["error"]["code"] == "session_not_found"
        assert loop.time() - started < 2.0
        # another user's pushRef is refused by the node that holds it
        mallory = mint_token(SECRET, "mallory", workflows=["*"])
        status, body = await post(b, "sse1", {"type": "ping", "id": 1}, mallory)
        assert status == 403 and body["error"]["code"] == "forbidden"
        stream.close()
