"""The SSE transport on its own, and the automatic fallback from WebSocket to SSE behind a
reverse proxy that refuses upgrades."""

from __future__ import annotations

import aiohttp
import pytest

from livepush.client import Client, ConnectionRefused, ConnectionState, Message, StateChange
from tests.client.proxies import sse_only_proxy
from tests.client.support import eventually, publish_many
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(10)


async def restart_connections(server: RunningServer) -> None:
    """The node's graceful drain: every connection is told to reconnect (1012 / an SSE
    `disconnect` event); then the node accepts connections again."""
    await server.node.drain(1.0)
    server.node.draining = False


async def test_sse_stream_commands_by_post_and_disconnect_event(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    received: list[Message] = []
    disconnects: list[Message] = []
    states: list[StateChange] = []
    client = Client(server.url, token=server.token(), transport="sse", backoff_base=0.01)
    client.on_channel("workflow:1", received.append)
    client.on("disconnect", disconnects.append)
    client.on_state(states.append)
    await client.connect()
    assert client.transport == "sse"
    assert client.sse_retry_ms == server.config.sse_retry_ms
    await client.subscribe("workflow:1")
    await publish_many(server, http, "workflow:1", range(1, 101))
    await eventually(lambda: len(received) == 100, what="100 publications")

    await restart_connections(server)
    await eventually(lambda: client.stats.connections == 2, what="the reconnect")
    assert disconnects[0].data["code"] == 1012 and disconnects[0].data["reconnect"] is True
    disconnected = [s for s in states if s.state is ConnectionState.DISCONNECTED]
    assert disconnected[0].code == 1012 and disconnected[0].transport == "sse"

    await publish_many(server, http, "workflow:1", range(101, 121))
    await eventually(lambda: len(received) == 120, what="publications after the reconnect")
    assert [m.data["n"] for m in received] == list(range(1, 121))
    assert [m.offset for m in received] == list(range(1, 121))
    await client.unsubscribe("workflow:1")
    assert client.channels == []
    await client.close()


async def test_auto_falls_back_to_sse_when_the_upgrade_is_refused_and_remembers(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with sse_only_proxy(server.url) as proxy:
        received: list[int] = []
        client = Client(proxy.url, token=server.token(), backoff_base=0.01)
        client.on_channel("workflow:1", lambda m: received.append(m.data["n"]))
        await client.connect()
        assert client.transport == "sse"
        assert proxy.refused_upgrades == 1 and proxy.streams == 1
        await client.subscribe("workflow:1")  # by POST, through the proxy
        assert proxy.posts == 1
        await publish_many(server, http, "workflow:1", range(1, 51))
        await eventually(lambda: len(received) == 50, what="50 publications")

        await restart_connections(server)
        await publish_many(server, http, "workflow:1", range(51, 81))
        await eventually(lambda: client.stats.connections == 2, what="the reconnect")
        await eventually(lambda: len(received) == 80, what="the missed publications")
        assert received == list(range(1, 81))
        # the fallback is remembered: no second upgrade attempt
        assert proxy.refused_upgrades == 1 and proxy.streams == 2
        assert client.transport == "sse"
        await client.close()


async def test_explicit_websocket_behind_the_proxy_is_refused(server: RunningServer) -> None:
    async with sse_only_proxy(server.url) as proxy:
        client = Client(proxy.url, token=server.token(), transport="websocket")
        with pytest.raises(ConnectionRefused) as refused:
            await client.connect()
        assert refused.value.status == 400 and refused.value.code is None
        await client.close()
