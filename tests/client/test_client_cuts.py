"""Network cuts between the client and a real server (through a TCP proxy that resets its
connections): every publication exactly once and in order, and `recovered: false` reported."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest

from livepush.client import Client, ConnectionState, Message, Position
from tests.client.proxies import tcp_proxy
from tests.client.support import eventually, publish_many
from tests.conftest import ServerFactory

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_every_publication_exactly_once_in_order_across_100_cuts(
    server_factory: ServerFactory, http: aiohttp.ClientSession, transport: Any
) -> None:
    server = await server_factory()
    rng = random.Random(7)
    async with tcp_proxy(server.url) as proxy:
        received: list[Message] = []
        failures: list[tuple[str, Position]] = []
        client = Client(
            proxy.url,
            token=server.token(),
            channels=["workflow:1"],
            transport=transport,
            backoff_base=0.002,
            backoff_cap=0.01,
            connect_timeout=2.0,
            rng=random.Random(1),
        )
        client.on_channel("workflow:1", received.append)
        client.on_recovery_failed(lambda channel, position: failures.append((channel, position)))
        await client.connect()

        cutting = True
        published = 0

        async def publisher() -> None:
            nonlocal published
            while cutting or published < 3000:
                await publish_many(server, http, "workflow:1", range(published + 1, published + 21))
                published += 20
                await asyncio.sleep(0.002)

        publishing = asyncio.create_task(publisher())
        cuts = 0
        try:
            while cuts < 100:
                await client.wait_connected()
                connections = client.stats.connections
                await asyncio.sleep(rng.uniform(0.0, 0.01))
                if proxy.cut():
                    cuts += 1
                    # the next cut hits the next connection, once it is established
                    await eventually(
                        lambda n=connections: client.stats.connections > n,  # type: ignore[misc]
                        timeout=3.0,
                        what="a reconnect",
                    )
        finally:
            cutting = False
            await publishing
        await eventually(
            lambda: bool(received) and received[-1].offset == published,
            timeout=5.0,
            what=f"offset {published}",
        )
        await client.close()

    assert cuts == 100 and proxy.cut_connections >= 100
    assert published >= 3000
    assert [m.offset for m in received] == list(range(1, published + 1))
    assert [m.data["n"] for m in received] == list(range(1, published + 1))
    assert len({m.epoch for m in received}) == 1
    assert failures == []
    assert client.stats.connections >= 101
    assert client.stats.delivered == published
    assert client.stats.recovered > 0  # cuts did fall between publications


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_short_outage_recovers_and_long_outage_reports_recovery_failed(
    server_factory: ServerFactory, http: aiohttp.ClientSession, transport: Any
) -> None:
    server = await server_factory(history_size=5)
    async with tcp_proxy(server.url) as proxy:
        received: list[int] = []
        events: list[Any] = []
        client = Client(
            proxy.url,
            token=server.token(),
            channels=["workflow:1"],
            transport=transport,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        client.on_channel("workflow:1", lambda m: received.append(m.data["n"]))
        client.on_channel("workflow:1", lambda m: events.append(m.data["n"]))
        client.on_recovery_failed(lambda channel, position: events.append((channel, position)))
        await client.connect()
        await publish_many(server, http, "workflow:1", range(1, 4))
        await eventually(lambda: len(received) == 3, what="3 publications")
        epoch = client.positions["workflow:1"].epoch

        async def outage(numbers: range) -> None:
            connections = client.stats.connections
            proxy.refuse = True
            proxy.cut()
            await eventually(lambda: client.state is not ConnectionState.CONNECTED)
            await publish_many(server, http, "workflow:1", numbers)
            proxy.refuse = False
            await eventually(lambda: client.stats.connections > connections, what="reconnect")

        # 4 missed, history holds 5: recovered exactly
        await outage(range(4, 8))
        await eventually(lambda: len(received) == 7, what="the missed publications")
        assert received == list(range(1, 8)) and events == received

        # 20 missed, history holds 5: recovered: false
        await outage(range(8, 28))
        await eventually(lambda: len(events) == 8, what="the recovery failure")
        assert events[-1] == ("workflow:1", Position(epoch, 27))
        assert client.positions["workflow:1"] == Position(epoch, 27)
        await publish_many(server, http, "workflow:1", range(28, 30))
        await eventually(lambda: len(received) == 9, what="live publications after it")
        assert received == [*range(1, 8), 28, 29]
        assert events[-3:] == [("workflow:1", Position(epoch, 27)), 28, 29]
        assert client.stats.recovery_failures == 1
        await client.close()
