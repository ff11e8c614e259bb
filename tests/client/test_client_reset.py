"""`channelReset` from a real server: with the Redis engine, a channel whose stream is lost
in Redis (here: its keys deleted) gets a new epoch; the node tells its clients, and the client
reports it to `on_recovery_failed` and continues from the new position."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from livepush.client import Client, Message, Position
from tests.client.support import eventually, publish_many
from tests.conftest import ServerFactory, redis_url

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_channel_reset_fires_recovery_failed_then_continues(
    server_factory: ServerFactory, http: aiohttp.ClientSession, transport: Any
) -> None:
    url = redis_url()
    prefix = f"lpclient-{uuid.uuid4().hex[:8]}"
    server = await server_factory(engine="redis", redis_url=url, redis_prefix=prefix)
    store = aioredis.from_url(url)
    try:
        events: list[object] = []
        resets: list[Message] = []
        client = Client(
            server.url,
            token=server.token(),
            channels=["workflow:1"],
            transport=transport,
        )
        client.on_channel("workflow:1", lambda m: events.append((m.epoch, m.offset)))
        client.on("channelReset", resets.append)
        client.on_recovery_failed(lambda channel, position: events.append((channel, position)))
        await client.connect()
        await publish_many(server, http, "workflow:1", range(1, 4))
        await eventually(lambda: len(events) == 3, what="3 publications")
        old_epoch = client.positions["workflow:1"].epoch

        # Redis loses the channel's stream: the next publication starts a new epoch
        await store.delete(f"{prefix}:{{workflow:1}}:m", f"{prefix}:{{workflow:1}}:s")
        await publish_many(server, http, "workflow:1", range(4, 6))
        await eventually(lambda: len(events) == 6, what="the reset and 2 publications")
        new_epoch = client.positions["workflow:1"].epoch
        assert new_epoch != old_epoch
        assert events == [
            (old_epoch, 1),
            (old_epoch, 2),
            (old_epoch, 3),
            ("workflow:1", Position(new_epoch, 0)),
            (new_epoch, 1),
            (new_epoch, 2),
        ]
        assert [m.data for m in resets] == [
            {"channel": "workflow:1", "epoch": new_epoch, "offset": 0}
        ]
        assert client.stats.recovery_failures == 1
        await client.close()
    finally:
        keys = [key async for key in store.scan_iter(match=f"{prefix}:*")]
        if keys:
            await store.delete(*keys)
        await store.aclose()
