"""livepush.client against a real in-process server: connect, subscribe, listeners, commands,
refusals."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from livepush.client import (
    Client,
    ClientClosed,
    CommandError,
    ConnectionRefused,
    ConnectionState,
    Message,
    StateChange,
)
from tests.client.support import eventually, publish_many
from tests.conftest import RunningServer, ServerFactory

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_receives_publications_in_order_with_listeners(
    server: RunningServer, http: aiohttp.ClientSession, transport: Any
) -> None:
    by_type: list[Message] = []
    by_channel: list[Message] = []
    everything: list[str] = []
    states: list[StateChange] = []
    client = Client(server.url, token=server.token(), transport=transport)
    client.on_state(states.append)
    remove_type = client.on("tick", by_type.append)
    remove_channel = client.on_channel("workflow:1", by_channel.append)
    client.on("*", lambda m: everything.append(m.type))
    async with client:
        assert client.state is ConnectionState.CONNECTED
        assert client.transport == transport
        assert client.user_id == "alice"

        reply = await client.subscribe("workflow:1")
        assert reply["channel"] == "workflow:1" and reply["offset"] == 0
        assert client.channels == ["workflow:1"]

        await publish_many(server, http, "workflow:1", range(1, 51))
        await publish_many(server, http, "workflow:2", range(1, 6))  # not subscribed
        await eventually(lambda: len(by_channel) == 50, what="50 publications")
        assert [m.data["n"] for m in by_channel] == list(range(1, 51))
        assert [m.offset for m in by_channel] == list(range(1, 51))
        assert all(m.channel == "workflow:1" and m.epoch for m in by_channel)
        assert [m.data["n"] for m in by_type] == list(range(1, 51))
        assert client.positions["workflow:1"].offset == 50

        # listeners by type see other channels' publications of that type, e.g. own channels
        status, _ = await server.publish(
            http, {"type": "tick", "data": {"n": 0}, "pushRef": client.push_ref}
        )
        assert status == 200
        await eventually(lambda: len(by_type) == 51, what="the push: publication")
        assert by_type[-1].channel == f"push:{client.push_ref}"
        assert len(by_channel) == 50

        # the returned functions remove the listeners
        remove_type()
        remove_channel()
        remove_type()  # idempotent
        await publish_many(server, http, "workflow:1", range(51, 53))
        await eventually(lambda: everything.count("tick") == 53, what="the * listener")
        assert len(by_type) == 51 and len(by_channel) == 50

        await client.unsubscribe("workflow:1")
        assert client.channels == []
        assert "workflow:1" not in client.positions
    assert client.closed
    assert [s.state for s in states] == [
        ConnectionState.CONNECTING,
        ConnectionState.CONNECTED,
        ConnectionState.CLOSED,
    ]
    assert states[1].transport == transport and states[1].url == client.url
    assert everything[0] == "connected"


async def test_initial_channels_and_async_listeners(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    seen: list[int] = []

    async def slow(message: Message) -> None:
        await asyncio.sleep(0.001)
        seen.append(message.data["n"])

    client = Client(server.url, token=server.token(), channels=["workflow:1", "workflow:2"])
    client.on_channel("workflow:2", slow)
    await client.connect()
    try:
        assert client.channels == ["workflow:1", "workflow:2"]
        await publish_many(server, http, "workflow:2", range(1, 31))
        await eventually(lambda: len(seen) == 30, what="30 publications")
        assert seen == list(range(1, 31))
    finally:
        await client.close()


async def test_commands_reply_and_errors(server: RunningServer) -> None:
    async with Client(server.url, token=server.token()) as client:
        assert await client.command("ping") == {}
        with pytest.raises(CommandError) as forbidden:
            await client.subscribe("workflow:99")  # not in the token's grants
        assert forbidden.value.code == "forbidden"
        assert client.channels == [] and "workflow:99" not in client.positions
        with pytest.raises(CommandError) as invalid:
            await client.subscribe("nope")
        assert invalid.value.code == "invalid_channel"
        with pytest.raises(CommandError) as unknown:
            await client.command("frobnicate")
        assert unknown.value.code == "unknown_command"
        with pytest.raises(CommandError) as not_subscribed:
            await client.unsubscribe("workflow:1")
        assert not_subscribed.value.code == "not_subscribed"
        again = await client.subscribe(f"push:{client.push_ref}")
        assert again["alreadySubscribed"] is True
        client.send("heartbeat")  # fire and forget: never answered
        await client.ping()
        await client.subscribe("workflow:1")
        presence = await client.command("presence", channel="workflow:1")
        assert presence["users"] == ["alice"]
    with pytest.raises(ClientClosed):
        await client.ping()


@pytest.mark.parametrize("transport", ["websocket", "sse", "auto"])
async def test_permanent_refusal_raises_with_the_server_code(
    server: RunningServer, transport: Any
) -> None:
    states: list[StateChange] = []
    client = Client(server.url, token="not-a-jwt", transport=transport, backoff_base=0.01)
    client.on_state(states.append)
    with pytest.raises(ConnectionRefused) as refused:
        await client.connect()
    assert refused.value.status == 401
    assert refused.value.code == "token_invalid"
    await client.close()
    assert client.closed
    assert [s.state for s in states] == [ConnectionState.CONNECTING, ConnectionState.CLOSED]
    assert states[-1].status == 401 and states[-1].error_code == "token_invalid"


async def test_refused_channel_in_the_handshake_is_dropped(server: RunningServer) -> None:
    forbidden = server.token(workflows=["1"])
    async with Client(server.url, token=forbidden, channels=["workflow:1", "workflow:2"]) as c:
        assert c.channels == ["workflow:1"]


async def test_token_callable_is_called_on_every_connect(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory()
    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        return server.token()

    async with Client(server.url, token=token, backoff_base=0.01) as client:
        assert calls == 1
        # the server's drain closes connections with 1012: the client reconnects
        await server.node.drain(0.5)
        server.node.draining = False
        await eventually(lambda: client.stats.connections == 2, what="a reconnect")
        assert calls == 2


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_listener_may_await_commands_and_close_the_client(
    server: RunningServer, http: aiohttp.ClientSession, transport: Any
) -> None:
    client = Client(server.url, token=server.token(), channels=["workflow:1"], transport=transport)
    replies: list[dict[str, Any]] = []

    async def on_message(message: Message) -> None:
        replies.append(await client.command("ping"))  # read while this listener waits
        if message.data["n"] == 3:
            await client.close()

    client.on_channel("workflow:1", on_message)
    await client.connect()
    await publish_many(server, http, "workflow:1", range(1, 4))
    await asyncio.wait_for(client.wait_closed(), 5.0)
    assert replies == [{}, {}, {}]
    assert client.close_error is None
