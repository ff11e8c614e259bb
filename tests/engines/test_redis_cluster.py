"""The Redis engine on a Redis Cluster (three primaries started by the test): keys of a
channel in one slot, sharded pub/sub (SPUBLISH/SSUBSCRIBE) on the primary that owns it,
channels spread over every primary."""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from livepush.engines.redis import RedisBroker, RedisPresence
from livepush.protocol.envelope import Priority, Publication, StreamPosition
from tests.engines.test_redis_engine import Node, until


def _message(channel: str, n: int, **options: Any) -> Publication:
    return Publication(channel, "tick", b'{"n":%d}' % n, **options)


async def test_channels_on_every_primary_in_order(redis_cluster: Any) -> None:
    prefix = f"lpc-{uuid.uuid4().hex[:6]}"
    a = Node(RedisBroker(redis_cluster.url, prefix=prefix, cluster=True))
    b = Node(RedisBroker(redis_cluster.url, prefix=prefix, cluster=True))
    await a.broker.start()
    await b.broker.start()
    try:
        channels = [f"workflow:{i}" for i in range(24)]
        for channel in channels:
            await a.broker.subscribe(channel)
        # the channels' slots are spread over the three primaries
        admin = RedisCluster.from_url(redis_cluster.url)
        await admin.initialize()
        owners = {
            admin.nodes_manager.get_node_from_slot(admin.keyslot(a.broker.keys.pubsub(c))).name
            for c in channels
        }
        await admin.aclose()
        assert len(owners) == 3
        for n in range(1, 11):
            for channel in channels:
                await b.broker.publish(_message(channel, n))
        await until(lambda: len(a.received) == 240)
        for channel in channels:
            assert a.offsets(channel) == list(range(1, 11))
        cursor = _message(channels[0], 0, priority=Priority.EPHEMERAL, key="k")
        await b.broker.publish(cursor)
        await until(lambda: len(a.received) == 241)
        recovery = await a.broker.recover(
            channels[5], StreamPosition(str(a.received[0].epoch), 0), 100
        )
        assert recovery.recovered is False or len(recovery.publications) == 10
    finally:
        await a.broker.close()
        await b.broker.close()


async def test_a_restarted_shard_connection_is_resynchronised(redis_cluster: Any) -> None:
    prefix = f"lpc-{uuid.uuid4().hex[:6]}"
    a = Node(
        RedisBroker(
            redis_cluster.url, prefix=prefix, cluster=True, reconnect_base=0.02, reconnect_cap=0.2
        )
    )
    b = Node(RedisBroker(redis_cluster.url, prefix=prefix, cluster=True))
    await a.broker.start()
    await b.broker.start()
    try:
        channel = "workflow:resync"
        await a.broker.subscribe(channel)
        await b.broker.publish(_message(channel, 1))
        await until(lambda: len(a.received) == 1)
        # cut every pub/sub connection of node a, on every primary
        for port in redis_cluster.ports:
            admin = aioredis.Redis(port=port)
            for client in await admin.client_list():
                if client.get("name") == f"{prefix}-pubsub":
                    await admin.execute_command("CLIENT", "KILL", "ID", client["id"])
            await admin.aclose()
        for n in range(2, 21):
            await b.broker.publish(_message(channel, n))
        await until(lambda: a.offsets(channel) == list(range(1, 21)))
        assert a.broker.ready and a.resets == []
    finally:
        await a.broker.close()
        await b.broker.close()


async def test_presence_on_a_cluster(redis_cluster: Any) -> None:
    presence = RedisPresence(redis_cluster.url, prefix="lpc", cluster=True)
    await presence.start()
    try:
        assert await presence.claim("pushref:x", "alice", 5)
        assert not await presence.claim("pushref:x", "bob", 5)
        await presence.join_many(
            [(f"workflow:{i}", "tab", {"userId": "alice"}) for i in range(10)], 5
        )
        assert await presence.members("workflow:7") == {"tab": {"userId": "alice"}}
        await presence.leave_many([(f"workflow:{i}", "tab") for i in range(10)])
        assert await presence.members("workflow:7") == {}
    finally:
        await presence.close()
