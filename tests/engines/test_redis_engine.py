"""What only the Redis engine does: several nodes on one Redis, gaps filled from the stream
after a lost pub/sub connection, continuity loss reported, a Redis restart survived. Real
Redis servers: the shared one for most tests, a private `redis-server` process where a test
restarts it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from livepush.engines.base import EngineUnavailable
from livepush.engines.redis import RedisBroker, RedisPresence
from livepush.protocol.envelope import Priority, Publication, StreamPosition
from tests.conftest import redis_url
from tests.integration.redis_process import RedisProcess


class Node:
    """What a livepush node gives a broker: a publication handler and a reset handler."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.received: list[Publication] = []
        self.resets: list[tuple[str, StreamPosition]] = []
        broker.set_handler(self.received.append)
        broker.set_reset_handler(lambda channel, position: self.resets.append((channel, position)))

    def offsets(self, channel: str) -> list[int | None]:
        return [p.offset for p in self.received if p.channel == channel]


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Poll state that has no event of its own (what a broker delivered)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def nodes(url: str, count: int = 2, **options: Any) -> AsyncIterator[list[Node]]:
    prefix = f"lptest-{uuid.uuid4().hex[:8]}"
    options = {"reconnect_base": 0.02, "reconnect_cap": 0.2, **options}
    brokers = [RedisBroker(url, prefix=prefix, **options) for _ in range(count)]
    try:
        for broker in brokers:
            await broker.start()
        yield [Node(broker) for broker in brokers]
    finally:
        for broker in brokers:
            await broker.close()


def message(channel: str, n: int, **options: Any) -> Publication:
    return Publication(channel, "workflowUpdated", b'{"n":%d}' % n, **options)


async def kill_pubsub(url: str, broker: RedisBroker) -> None:
    """Cut the broker's pub/sub connection from the Redis side (CLIENT KILL)."""
    admin = aioredis.Redis.from_url(url)
    try:
        killed = 0
        for client in await admin.client_list():
            if client.get("name") == f"{broker.keys.prefix}-pubsub":
                await admin.execute_command("CLIENT", "KILL", "ID", client["id"])
                killed += 1
        assert killed, "no pub/sub connection found"
    finally:
        await admin.aclose()


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
def channel() -> str:
    return f"workflow:{uuid.uuid4().hex}"


async def test_publications_from_one_node_reach_the_other_in_order(url: str, channel: str) -> None:
    async with nodes(url, 3) as (a, b, c):
        await a.broker.subscribe(channel)
        await b.broker.subscribe(channel)
        for i in range(1, 101):
            await (b if i % 2 else c).broker.publish(message(channel, i))
        await until(lambda: len(a.offsets(channel)) == 100 and len(b.offsets(channel)) == 100)
        assert a.offsets(channel) == list(range(1, 101))
        assert b.offsets(channel) == list(range(1, 101))
        assert [p.data for p in a.received] == [b'{"n":%d}' % i for i in range(1, 101)]
        assert not c.received  # not subscribed: nothing reaches it
        assert a.broker.channel_count == 1 and c.broker.channel_count == 0


async def test_concurrent_publishers_produce_one_order_everywhere(url: str, channel: str) -> None:
    async with nodes(url, 3) as (a, b, c):
        await a.broker.subscribe(channel)
        await b.broker.subscribe(channel)

        async def burst(node: Node, tag: int) -> None:
            for i in range(100):
                await node.broker.publish(message(channel, tag * 1000 + i))

        await asyncio.gather(burst(a, 1), burst(b, 2), burst(c, 3))
        await until(lambda: len(a.offsets(channel)) == 300 and len(b.offsets(channel)) == 300)
        assert a.offsets(channel) == list(range(1, 301))
        assert [p.data for p in a.received] == [p.data for p in b.received]


async def test_ephemeral_publications_cross_nodes_outside_the_stream(
    url: str, channel: str
) -> None:
    async with nodes(url) as (a, b):
        await a.broker.subscribe(channel)
        cursor = message(channel, 1, priority=Priority.EPHEMERAL, key="cursor:u1")
        await b.broker.publish(cursor)
        await until(lambda: len(a.received) == 1)
        (got,) = a.received
        assert got.offset is None and got.priority is Priority.EPHEMERAL and got.key == "cursor:u1"
        assert (await b.broker.position(channel)).offset == 0


async def test_unsubscribed_node_stops_receiving(url: str, channel: str) -> None:
    async with nodes(url) as (a, b):
        await a.broker.subscribe(channel)
        await b.broker.publish(message(channel, 1))
        await until(lambda: len(a.received) == 1)
        await a.broker.unsubscribe(channel)
        await b.broker.publish(message(channel, 2))
        await asyncio.sleep(0.2)
        assert a.offsets(channel) == [1]


async def test_subscribe_is_idempotent_and_waits_for_the_subscription(
    url: str, channel: str
) -> None:
    async with nodes(url) as (a, b):
        await asyncio.gather(*(a.broker.subscribe(channel) for _ in range(5)))
        position = await a.broker.position(channel)
        await b.broker.publish(message(channel, 1))
        await until(lambda: len(a.received) == 1)
        assert a.received[0].offset == position.offset + 1


async def test_lost_pubsub_messages_are_filled_from_the_stream(url: str, channel: str) -> None:
    async with nodes(url) as (a, b):
        await a.broker.subscribe(channel)
        await b.broker.publish(message(channel, 1))
        await until(lambda: len(a.received) == 1)
        await kill_pubsub(url, a.broker)
        for i in range(2, 52):
            await b.broker.publish(message(channel, i))
        await until(lambda: len(a.offsets(channel)) == 51)
        assert a.offsets(channel) == list(range(1, 52))
        assert a.resets == []
        assert a.broker.ready


async def test_not_ready_while_the_pubsub_connection_is_down(url: str, channel: str) -> None:
    async with nodes(url, reconnect_base=0.5, reconnect_cap=1.0) as (a, _):
        await a.broker.subscribe(channel)
        assert a.broker.ready
        await kill_pubsub(url, a.broker)
        await until(lambda: not a.broker.ready)
        await until(lambda: a.broker.ready, timeout=10)


async def test_gap_beyond_history_is_reported_as_a_reset(url: str, channel: str) -> None:
    async with nodes(url, history_size=3) as (a, b):
        await a.broker.subscribe(channel)
        await b.broker.publish(message(channel, 1))
        await until(lambda: len(a.received) == 1)
        await kill_pubsub(url, a.broker)
        for i in range(2, 12):
            await b.broker.publish(message(channel, i))
        await until(lambda: len(a.resets) == 1)
        reset_channel, position = a.resets[0]
        assert reset_channel == channel and position.offset == 11
        await b.broker.publish(message(channel, 12))
        await until(lambda: a.offsets(channel)[-1:] == [12])
        assert a.offsets(channel) == [1, 12]


async def test_lost_stream_changes_epoch_and_is_reported(url: str, channel: str) -> None:
    """Redis lost the channel (eviction, restart without persistence): the next publication
    starts a new epoch, and the node hears of the discontinuity before it."""
    async with nodes(url) as (a, b):
        await a.broker.subscribe(channel)
        first = await b.broker.publish(message(channel, 1))
        await until(lambda: len(a.received) == 1)
        admin = aioredis.Redis.from_url(url)
        await admin.delete(b.broker.keys.meta(channel), b.broker.keys.stream(channel))
        await admin.aclose()
        second = await b.broker.publish(message(channel, 2))
        assert second.epoch != first.epoch and second.offset == 1
        await until(lambda: len(a.received) == 2)
        assert a.resets == [(channel, StreamPosition(str(second.epoch), 0))]
        assert a.received[1].epoch == second.epoch


async def test_recover_across_nodes(url: str, channel: str) -> None:
    async with nodes(url) as (a, b):
        placed = [await a.broker.publish(message(channel, i)) for i in range(1, 6)]
        since = StreamPosition(str(placed[1].epoch), 2)
        recovery = await b.broker.recover(channel, since, 100)
        assert recovery.recovered
        assert [p.offset for p in recovery.publications] == [3, 4, 5]
        assert [p.data for p in recovery.publications] == [p.data for p in placed[2:]]


async def test_presence_is_shared_between_nodes(url: str) -> None:
    prefix = f"lptest-{uuid.uuid4().hex[:8]}"
    one, two = RedisPresence(url, prefix=prefix), RedisPresence(url, prefix=prefix)
    await one.start()
    await two.start()
    try:
        assert await one.claim("pushref:x", "alice", 5)
        assert not await two.claim("pushref:x", "bob", 5)
        await one.join("workflow:1", "tab-1", {"user": "alice"}, 5)
        await two.join("workflow:1", "tab-2", {"user": "bob"}, 0.2)
        assert set(await one.members("workflow:1")) == {"tab-1", "tab-2"}
        await asyncio.sleep(0.3)
        assert await one.members("workflow:1") == {"tab-1": {"user": "alice"}}
    finally:
        await one.close()
        await two.close()


async def test_redis_restart_without_persistence(private_redis: RedisProcess, channel: str) -> None:
    """The node stays up while Redis is gone (publishing fails with engine_unavailable), comes
    back by itself, reports the lost stream as a reset, and new publications flow."""
    async with nodes(private_redis.url) as (a, b):
        await a.broker.subscribe(channel)
        first = await b.broker.publish(message(channel, 1))
        await until(lambda: len(a.received) == 1)
        await private_redis.kill()
        await until(lambda: not a.broker.ready)
        with pytest.raises(EngineUnavailable):
            await b.broker.publish(message(channel, 2))
        await private_redis.start()
        await until(lambda: a.broker.ready, timeout=10)
        await until(lambda: len(a.resets) == 1)
        channel_reset, position = a.resets[0]
        assert channel_reset == channel and position.epoch != first.epoch
        again = await b.broker.publish(message(channel, 3))
        assert again.epoch == position.epoch
        await until(lambda: a.received[-1].data == b'{"n":3}')
        assert a.received[-1].epoch == position.epoch


async def test_subscribe_while_redis_is_down_fails_cleanly(
    private_redis: RedisProcess, server_factory: Any, http: Any
) -> None:
    """A subscribe while Redis is unreachable is refused at once with `engine_unavailable`
    and leaves no half subscription; once Redis is back the same subscribe works."""
    from tests.integration.helpers import command, receive_json

    server = await server_factory(
        engine="redis", redis_url=private_redis.url, redis_prefix="lpdown"
    )
    ws = await http.ws_connect(server.push_url("tab", server.token(workflows=["*"])))
    assert (await receive_json(ws))["type"] == "connected"
    await private_redis.kill()
    await until(lambda: not server.node.ready)
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await command(ws, {"type": "subscribe", "channel": "workflow:9", "id": 1})
    assert reply["type"] == "error" and reply["data"]["code"] == "engine_unavailable"
    assert loop.time() - started < 2.0
    session = server.node.session("tab")
    assert session is not None and session.channels == []
    assert server.node.hub.subscribers("workflow:9") == 0
    await private_redis.start()
    await until(lambda: server.node.ready, timeout=10)
    reply = await command(ws, {"type": "subscribe", "channel": "workflow:9", "id": 2})
    assert reply["type"] == "reply" and reply["data"]["channel"] == "workflow:9"
    status, _ = await server.publish(http, {"type": "hello", "data": {}, "channel": "workflow:9"})
    assert status == 200
    assert (await receive_json(ws))["type"] == "hello"
    await ws.close()
