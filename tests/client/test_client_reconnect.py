"""Reconnection: the jittered backoff, round robin over URLs, the close codes that stop the
client (4009 replaced) or make it fetch a fresh token (4001), and fail-over between two real
`livepush serve` processes."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

import aiohttp
import pytest

from livepush.auth.tokens import mint_token
from livepush.client import (
    Backoff,
    Client,
    ClientClosed,
    ConnectionFailed,
    ConnectionRefused,
    ConnectionState,
    Position,
    StateChange,
    backoff_ceiling,
    full_jitter,
)
from tests.client.support import eventually
from tests.conftest import API_KEY, SECRET, RunningServer, ServerFactory
from tests.integration.process import serve_process

pytestmark = pytest.mark.timeout(15)


def dead_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_full_jitter_delays_stay_within_the_window() -> None:
    base, cap = 0.5, 30.0
    rng = random.Random(1234)
    for attempt in range(40):
        ceiling = min(cap, base * 2**attempt)
        assert backoff_ceiling(attempt, base, cap) == ceiling
        draws = [full_jitter(attempt, base, cap, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in draws)
        # full jitter: the whole window is used, not just its upper part
        assert min(draws) < 0.05 * ceiling and max(draws) > 0.95 * ceiling
    # seeded: reproducible
    first = [full_jitter(n, base, cap, random.Random(9)) for n in range(10)]
    assert first == [full_jitter(n, base, cap, random.Random(9)) for n in range(10)]
    assert backoff_ceiling(10_000, base, cap) == cap  # no overflow


def test_backoff_counts_failures_and_resets() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(5))
    delays = [backoff.next_delay() for _ in range(8)]
    assert backoff.attempt == 8
    assert all(0 <= d <= min(1.0, 0.1 * 2**n) for n, d in enumerate(delays))
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_delay() <= 0.1


async def test_dead_first_url_then_the_second(server: RunningServer) -> None:
    states: list[StateChange] = []
    dead = dead_url()
    client = Client([dead, server.url], token=server.token(), backoff_base=0.01)
    client.on_state(states.append)
    await client.connect()
    assert client.url == f"{server.url}/rest/push"
    await client.close()
    assert [(s.state, s.url) for s in states[:4]] == [
        (ConnectionState.CONNECTING, f"{dead}/rest/push"),
        (ConnectionState.RECONNECTING, f"{server.url}/rest/push"),
        (ConnectionState.CONNECTING, f"{server.url}/rest/push"),
        (ConnectionState.CONNECTED, f"{server.url}/rest/push"),
    ]
    assert isinstance(states[1].error, OSError)
    assert states[1].delay is not None and 0 <= states[1].delay <= 0.01


async def test_round_robin_with_bounded_delays_then_gives_up() -> None:
    urls = [dead_url(), dead_url(), dead_url()]
    states: list[StateChange] = []
    client = Client(
        urls,
        token="t",
        backoff_base=0.001,
        backoff_cap=0.004,
        max_attempts=7,
        rng=random.Random(3),
    )
    client.on_state(states.append)
    with pytest.raises(ConnectionFailed):
        await client.connect()
    await client.close()
    tried = [s.url for s in states if s.state is ConnectionState.CONNECTING]
    assert tried == [f"{urls[n % 3]}/rest/push" for n in range(7)]
    waits = [s for s in states if s.state is ConnectionState.RECONNECTING]
    assert len(waits) == 6
    for n, wait in enumerate(waits):
        assert wait.delay is not None and 0 <= wait.delay <= min(0.004, 0.001 * 2**n)
    assert states[-1].state is ConnectionState.CLOSED
    assert isinstance(states[-1].error, ConnectionFailed)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_replaced_by_a_second_client_with_the_same_push_ref_stops(
    server: RunningServer, transport: Any
) -> None:
    states: list[StateChange] = []
    first = Client(server.url, token=server.token(), push_ref="tab-1", transport=transport)
    first.on_state(states.append)
    await first.connect()
    second = Client(server.url, token=server.token(), push_ref="tab-1", transport=transport)
    await second.connect()
    await asyncio.wait_for(first.wait_closed(), 5.0)
    assert states[-1].state is ConnectionState.CLOSED and states[-1].code == 4009
    assert isinstance(states[-1].error, ConnectionRefused)
    assert states[-1].error.close_code == 4009
    with pytest.raises(ClientClosed):
        await first.ping()
    assert isinstance(first.close_error, ConnectionRefused)
    assert first.close_error.close_code == 4009 and first.close_error.code == "replaced"
    await asyncio.sleep(0.3)  # the first one does not come back to take the pushRef again
    assert second.state is ConnectionState.CONNECTED and second.stats.connections == 1
    assert first.stats.connections == 1
    await second.ping()
    await first.close()
    await second.close()


async def test_token_expired_reconnects_with_a_fresh_token(server_factory: ServerFactory) -> None:
    server = await server_factory(jwt_leeway=0)
    tokens = [mint_token(SECRET, "alice", ttl=1, now=time.time())]

    def token() -> str:
        if tokens:
            return tokens.pop()
        return server.token()

    states: list[StateChange] = []
    client = Client(server.url, token=token, auto_refresh=False, backoff_base=0.01)
    client.on_state(states.append)
    await client.connect()
    await eventually(lambda: client.stats.connections == 2, timeout=4.0, what="reconnect")
    disconnected = [s for s in states if s.state is ConnectionState.DISCONNECTED]
    assert [s.code for s in disconnected] == [4001]
    await client.close()

    # a plain string cannot be refreshed: the reconnect is refused, the client closes
    client = Client(server.url, token=mint_token(SECRET, "alice", ttl=1), backoff_base=0.01)
    await client.connect()
    await asyncio.wait_for(client.wait_closed(), 4.0)
    with pytest.raises(ClientClosed):
        await client.ping()
    refused = client.close_error
    assert isinstance(refused, ConnectionRefused)
    assert refused.status == 401 and refused.code == "token_expired"


async def test_token_expiring_is_refreshed_without_reconnecting(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(jwt_leeway=0)
    issued: list[str] = []

    async def token() -> str:
        value = mint_token(SECRET, "alice", ttl=1 if not issued else 3600, now=time.time())
        issued.append(value)
        return value

    client = Client(server.url, token=token)
    await client.connect()
    # tokenExpiring comes at once (the token expires within the warning time): refreshed
    await eventually(lambda: len(issued) == 2, what="the refresh")
    await asyncio.sleep(1.3)  # past the first token's expiry (at most 1 s away)
    assert client.state is ConnectionState.CONNECTED and client.stats.connections == 1
    await client.close()


async def test_failover_between_two_server_processes() -> None:
    env = {"LIVEPUSH_JWT_SECRET": SECRET, "LIVEPUSH_API_KEY": API_KEY}
    token = mint_token(SECRET, "alice", workflows=["1"])
    async with (
        serve_process(env=env) as one,
        serve_process(env=env) as two,
        aiohttp.ClientSession() as http,
    ):

        async def publish(url: str, n: int) -> None:
            async with http.post(
                f"{url}/api/v1/publish",
                json={"type": "step", "data": {"n": n}, "channel": "workflow:1"},
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as response:
                assert response.status == 200

        received: list[int] = []
        failed: list[tuple[str, Position]] = []
        states: list[StateChange] = []
        client = Client([one.url, two.url], token=token, channels=["workflow:1"], backoff_base=0.05)
        client.on_channel("workflow:1", lambda m: received.append(m.data["n"]))
        client.on_recovery_failed(lambda channel, position: failed.append((channel, position)))
        client.on_state(states.append)
        await client.connect()
        for n in (1, 2):
            await publish(one.url, n)
        await eventually(lambda: received == [1, 2], what="two publications")
        client_epoch = client.positions["workflow:1"].epoch
        await one.stop()  # SIGTERM: the node drains, its clients get 1012
        await eventually(lambda: client.stats.connections == 2, timeout=8.0, what="fail-over")
        assert client.url == f"{two.url}/rest/push"
        disconnected = [s for s in states if s.state is ConnectionState.DISCONNECTED]
        assert disconnected[0].code == 1012
        # the second node has its own streams (memory engine): other epochs, reported for
        # every channel, own channels included
        await eventually(lambda: len(failed) == 4, what="the recovery failures")
        channels = {channel: position for channel, position in failed}
        assert set(channels) == {f"push:{client.push_ref}", "user:alice", "system", "workflow:1"}
        assert channels["workflow:1"].offset == 0
        assert channels["workflow:1"].epoch != client_epoch
        await publish(two.url, 3)
        await eventually(lambda: received == [1, 2, 3], what="the publication on node two")
        await client.close()
