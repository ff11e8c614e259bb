"""Commands across disconnections: the bounded queue, its overflow, timeouts, and what happens
to commands in flight when the connection drops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from livepush.client import (
    Client,
    ClientClosed,
    CommandError,
    CommandTimeout,
    ConnectionLost,
    ConnectionState,
    QueueFull,
)
from tests.client.proxies import TcpProxy, tcp_proxy
from tests.client.support import eventually
from tests.conftest import RunningServer, ServerFactory

pytestmark = pytest.mark.timeout(10)


async def cut_off(client: Client, proxy: TcpProxy) -> None:
    """Make the server unreachable and wait until the client noticed."""
    proxy.refuse = True
    proxy.cut()
    await eventually(lambda: client.state is not ConnectionState.CONNECTED, what="disconnect")


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_commands_issued_while_disconnected_are_sent_in_order_after_reconnect(
    server: RunningServer, transport: Any
) -> None:
    async with tcp_proxy(server.url) as proxy:
        client = Client(
            proxy.url,
            token=server.token(),
            transport=transport,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        await client.connect()
        await cut_off(client, proxy)
        # only correct in this order: unsubscribe before the subscribe would be not_subscribed
        calls = [
            asyncio.create_task(client.subscribe("workflow:2")),
            asyncio.create_task(client.unsubscribe("workflow:2")),
            asyncio.create_task(client.subscribe("workflow:2")),
            asyncio.create_task(client.command("ping")),
        ]
        await asyncio.sleep(0.2)
        assert not any(call.done() for call in calls)
        assert client.state is not ConnectionState.CONNECTED
        proxy.refuse = False
        results = await asyncio.wait_for(asyncio.gather(*calls), 5.0)
        assert [r.get("channel") for r in results] == [
            "workflow:2",
            "workflow:2",
            "workflow:2",
            None,
        ]
        assert "alreadySubscribed" not in results[2]
        assert client.channels == ["workflow:2"]
        assert client.stats.connections == 2
        await client.close()


async def test_queue_overflow_refuses_the_newest_command(server: RunningServer) -> None:
    async with tcp_proxy(server.url) as proxy:
        client = Client(
            proxy.url,
            token=server.token(),
            command_queue_size=3,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        await client.connect()
        await cut_off(client, proxy)
        queued = [asyncio.create_task(client.command("ping")) for _ in range(3)]
        await asyncio.sleep(0)  # the three are in the queue now
        with pytest.raises(QueueFull):
            await client.command("ping")
        with pytest.raises(QueueFull):
            client.send("heartbeat")
        assert not any(task.done() for task in queued)
        proxy.refuse = False
        assert await asyncio.wait_for(asyncio.gather(*queued), 5.0) == [{}, {}, {}]
        # connected, the bound does not apply: commands go straight to the connection
        assert await asyncio.gather(*(client.command("ping") for _ in range(10))) == [{}] * 10
        await client.close()


async def test_command_timeout_while_queued_and_while_in_flight(server: RunningServer) -> None:
    async with tcp_proxy(server.url) as proxy:
        client = Client(
            proxy.url,
            token=server.token(),
            command_timeout=0.2,
            command_queue_size=1,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        await client.connect()
        # sent, but the network holds it: no reply in time
        proxy.stall()
        with pytest.raises(CommandTimeout):
            await client.command("ping")
        proxy.resume()
        assert await client.command("ping") == {}  # a late reply of the first is ignored

        await cut_off(client, proxy)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CommandTimeout):
            await client.command("ping")
        assert 0.15 < loop.time() - started < 1.0
        # the timed-out command left the queue: there is room for one again
        waiting = asyncio.create_task(client.command("ping"))
        await asyncio.sleep(0)
        proxy.refuse = False
        assert await waiting == {}
        await client.close()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_in_flight_commands_idempotent_resent_others_fail_with_connection_lost(
    server: RunningServer, transport: Any
) -> None:
    async with tcp_proxy(server.url) as proxy:
        client = Client(
            proxy.url,
            token=server.token(),
            transport=transport,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        await client.connect()
        proxy.stall()  # the commands leave the client but never reach the server
        ping = asyncio.create_task(client.command("ping"))
        subscribe = asyncio.create_task(client.subscribe("workflow:1"))
        refresh = asyncio.create_task(client.command("refresh", token=server.token()))
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in (ping, subscribe, refresh))
        proxy.cut()
        proxy.resume()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(refresh, 5.0)
        assert await asyncio.wait_for(ping, 5.0) == {}
        assert (await asyncio.wait_for(subscribe, 5.0))["channel"] == "workflow:1"
        assert client.stats.commands_resent == 2
        assert client.channels == ["workflow:1"]
        await client.close()


async def test_close_fails_waiting_commands(server: RunningServer) -> None:
    async with tcp_proxy(server.url) as proxy:
        client = Client(proxy.url, token=server.token(), backoff_base=0.01, backoff_cap=0.05)
        await client.connect()
        await cut_off(client, proxy)
        waiting = asyncio.create_task(client.command("ping"))
        await asyncio.sleep(0)
        await client.close()
        with pytest.raises(ClientClosed):
            await waiting
        with pytest.raises(ClientClosed):
            await client.command("ping")


async def test_rate_limited_commands_over_sse_fail_with_the_server_code(
    server_factory: ServerFactory,
) -> None:
    # The server answers an over-the-rate command with an error that has no `id`; in an SSE
    # POST answer it still sits at the command's position, which the client uses.
    server = await server_factory(rate_limit=0.5, rate_burst=5)
    async with Client(
        server.url, token=server.token(), transport="sse", command_timeout=2.0
    ) as client:
        results = await asyncio.gather(
            *(client.command("ping") for _ in range(7)), return_exceptions=True
        )
    assert results[:5] == [{}] * 5
    assert [type(r) for r in results[5:]] == [CommandError, CommandError]
    assert all(isinstance(r, CommandError) and r.code == "rate_limited" for r in results[5:])
