"""Admission (`transports/admission.py`): the per-node connection cap and the per-address
handshake rate, on both endpoints, behind a proxy or not."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import aiohttp

from tests.conftest import RunningServer, ServerFactory
from tests.integration.helpers import receive_json


async def handshake(
    http: aiohttp.ClientSession, server: RunningServer, push_ref: str, **headers: str
) -> aiohttp.ClientResponse:
    """A WebSocket upgrade attempt; the response (101 or a refusal), left for the caller."""
    return await http.get(
        server.push_url(push_ref, server.token()),
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            **headers,
        },
    )


async def metric(http: aiohttp.ClientSession, server: RunningServer, code: str) -> float:
    async with http.get(f"{server.url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(f'livepush_handshake_failures_total{{code="{code}"}}'):
            return float(line.split()[-1])
    return 0.0


async def test_handshakes_over_the_rate_of_an_address_are_429_with_retry_after(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(handshake_rate=2, handshake_burst=5)
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            response = await handshake(http, server, f"tab{i}")
            assert response.status == 101
            response.close()
        refused = await handshake(http, server, "tab5")
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "1"
        assert (await refused.json())["error"]["code"] == "too_many_handshakes"
        assert await metric(http, server, "too_many_handshakes") == 1
        # another address is not affected (127.0.0.2 is loopback too)
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as other:
            response = await handshake(other, server, "elsewhere")
            assert response.status == 101
            response.close()
        # the bucket refills at the rate
        await asyncio.sleep(0.6)
        response = await handshake(http, server, "tab6")
        assert response.status == 101
        response.close()


async def test_behind_a_trusted_proxy_the_address_is_the_one_the_proxy_reported(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(handshake_rate=0.01, handshake_burst=1, trust_proxy=True)
    async with aiohttp.ClientSession() as http:
        first = await handshake(http, server, "a1", **{"X-Forwarded-For": "198.51.100.7"})
        assert first.status == 101
        first.close()
        # the client's own entries come first; the proxy's, last, is what counts
        spoofed = await handshake(
            http, server, "a2", **{"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
        )
        assert spoofed.status == 429
        other = await handshake(http, server, "b1", **{"X-Forwarded-For": "198.51.100.8"})
        assert other.status == 101
        other.close()
        forwarded = await handshake(http, server, "b2", Forwarded='for="198.51.100.8"')
        assert forwarded.status == 429


async def test_without_a_trusted_proxy_forwarded_headers_are_ignored(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(handshake_rate=0.01, handshake_burst=1)
    async with aiohttp.ClientSession() as http:
        first = await handshake(http, server, "a1", **{"X-Forwarded-For": "198.51.100.7"})
        assert first.status == 101
        first.close()
        second = await handshake(http, server, "a2", **{"X-Forwarded-For": "198.51.100.8"})
        assert second.status == 429


async def test_the_connection_cap_counts_push_and_crdt_connections(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(max_connections=3)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        sockets = []
        for i in range(2):
            ws = await stack.enter_async_context(
                http.ws_connect(server.push_url(f"tab{i}", server.token()))
            )
            assert (await receive_json(ws))["type"] == "connected"
            sockets.append(ws)
        crdt = await stack.enter_async_context(
            http.ws_connect(f"{server.ws_base}/rest/crdt/1?token={server.token()}")
        )
        await crdt.receive()  # the document's first sync: the connection is open
        refused = await handshake(http, server, "tab3")
        assert refused.status == 503
        assert 1 <= int(refused.headers["Retry-After"]) <= 5
        assert (await refused.json())["error"]["code"] == "server_full"
        async with http.get(
            f"{server.url}/rest/crdt/2?token={server.token()}",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as response:
            assert response.status == 503
        # one leaves: room for one more
        await sockets[0].close()
        for _ in range(50):
            if len(server.node.hub) < 2:
                break
            await asyncio.sleep(0.02)
        response = await handshake(http, server, "tab4")
        assert response.status == 101
        response.close()
