"""The CRDT endpoint against a real server (memory engine, SQLite store) and real clients:
the Python client (`livepush.client.crdt`) and raw aiohttp WebSockets for what a well-behaved
client never sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pycrdt import Doc, Map

from livepush.client.crdt import CrdtClient, crdt_url
from livepush.collab.crdt.documents import Documents
from livepush.protocol.crdt import (
    EMPTY_UPDATE,
    decode_state_vector,
    permission_denied,
    sync_step1,
)
from livepush.transports.crdt import CRDT_ENDPOINT
from tests.conftest import RunningServer, ServerFactory
from tests.crdt.crdt_support import canvas_of, eventually


def service(server: RunningServer) -> Documents:
    return server.services.documents


@pytest.fixture
async def crdt_server(server_factory: ServerFactory) -> RunningServer:
    return await server_factory(crdt_path=":memory:")


class Clients:
    """Python CRDT clients of one test, closed at its end."""

    def __init__(self) -> None:
        self.opened: list[CrdtClient] = []

    async def open(
        self, server: RunningServer, doc_id: str = "1", *, user: str = "alice", **claims: Any
    ) -> CrdtClient:
        client = CrdtClient(
            crdt_url(server.url, doc_id, rest_prefix=server.config.rest_prefix),
            Doc(),
            token=server.token(user, **claims),
        )
        await client.connect()
        self.opened.append(client)
        async with asyncio.timeout(10):
            await client.synced.wait()
        return client


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    yield opened
    for client in opened.opened:
        await client.close()


def canvas(client: CrdtClient) -> Any:
    return client.doc.get("canvas", type=Map)


async def test_two_clients_converge_and_a_late_joiner_gets_everything(
    crdt_server: RunningServer, clients: Clients
):
    first = await clients.open(crdt_server)
    second = await clients.open(crdt_server, user="bob")
    canvas(first)["a"] = "from first"
    canvas(second)["b"] = "from second"
    await first.flush()
    await second.flush()
    expected = {"a": "from first", "b": "from second"}
    await eventually(lambda: canvas_of(first.doc) == expected == canvas_of(second.doc))
    late = await clients.open(crdt_server, user="carol")
    assert canvas_of(late.doc) == expected  # synced: its step 1 was answered
    stats = await service(crdt_server).rooms.store.stats("1")
    assert stats.updates == 2


async def test_a_read_only_client_receives_but_its_edits_go_nowhere(
    crdt_server: RunningServer, clients: Clients
):
    writer = await clients.open(crdt_server)
    reader = await clients.open(crdt_server, user="rita", read_only=True)
    canvas(writer)["title"] = "v1"
    await eventually(lambda: canvas_of(reader.doc) == {"title": "v1"})
    canvas(reader)["title"] = "hacked"
    canvas(reader)["extra"] = "x"
    await reader.flush()  # both updates were handled by the server
    assert reader.denied == ["read_only"]  # told once
    assert not reader.closed.is_set()
    canvas(writer)["title"] = "v2"
    await writer.flush()
    third = await clients.open(crdt_server, user="carol")
    assert canvas_of(third.doc) == {"title": "v2"}
    await eventually(lambda: canvas_of(writer.doc) == {"title": "v2"})
    # the reader still gets updates (its own local edits stay local to it)
    await eventually(lambda: canvas_of(reader.doc).get("extra") == "x")
    room = service(crdt_server).rooms.get("1")
    assert room is not None and canvas_of(room.doc) == {"title": "v2"}
    metrics = crdt_server.node.metrics.render().decode()
    assert 'livepush_crdt_updates_total{result="read_only"} 2.0' in metrics
    # awareness is allowed
    reader.set_awareness({"name": "Rita"})
    await eventually(lambda: list(writer.peers.values()) == [{"name": "Rita"}])


async def test_an_empty_first_sync_of_a_read_only_client_is_not_an_edit(
    crdt_server: RunningServer, clients: Clients
):
    writer = await clients.open(crdt_server)
    canvas(writer)["k"] = "v"
    await writer.flush()
    reader = await clients.open(crdt_server, user="rita", read_only=True)
    await reader.flush()
    assert reader.denied == []
    # reconnecting with the same content (its step 2 holds nothing new) is not an edit either
    again = CrdtClient(reader.url, reader.doc, token=crdt_server.token("rita", read_only=True))
    await again.connect()
    clients.opened.append(again)
    await again.flush()
    assert again.denied == []


async def test_handshake_refusals_are_http_errors(
    crdt_server: RunningServer, http: aiohttp.ClientSession
):
    base = f"{crdt_server.url}/rest/crdt"

    async def refused(url: str, **kwargs: Any) -> tuple[int, str]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(url, **kwargs)
        return caught.value.status, ""

    assert (await refused(f"{base}/1"))[0] == 401
    assert (await refused(f"{base}/1?token=garbage"))[0] == 401
    assert (await refused(f"{base}/3?token={crdt_server.token()}"))[0] == 403  # not granted
    assert (await refused(f"{base}?docId=3&token={crdt_server.token()}"))[0] == 403
    assert (await refused(f"{base}/bad%20id?token={crdt_server.token()}"))[0] == 400
    evil = {"Origin": "https://evil.example"}
    assert (await refused(f"{base}/1?token={crdt_server.token()}", headers=evil))[0] == 403
    async with http.get(f"{base}/3?token={crdt_server.token()}") as response:
        assert response.status == 406
    async with http.get(
        f"{base}/3?token={crdt_server.token()}",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    ) as response:
        assert response.status == 403
        body = await response.json()
        assert body["error"]["code"] == "forbidden"
    # the token may also come as a header or a cookie
    headers = {"Authorization": f"Bearer {crdt_server.token()}"}
    async with http.ws_connect(f"{base}/1", headers=headers) as ws:
        assert (await ws.receive_bytes())[:2] == b"\x00\x00"  # our sync step 1
    cookies = {"n8n-auth": crdt_server.token()}
    async with (
        aiohttp.ClientSession(cookies=cookies) as with_cookie,
        with_cookie.ws_connect(f"{base}/1") as ws,
    ):
        assert (await ws.receive_bytes())[:2] == b"\x00\x00"
    failures = crdt_server.node.metrics.render().decode()
    assert 'livepush_handshake_failures_total{code="forbidden"}' in failures


async def test_an_oversized_update_closes_only_its_connection(
    server_factory: ServerFactory, clients: Clients
):
    server = await server_factory(crdt_path=":memory:", crdt_max_update_bytes=10_000)
    bystander = await clients.open(server)
    offender = await clients.open(server, user="bob")
    canvas(offender)["blob"] = "x" * 15_000
    async with asyncio.timeout(10):
        await offender.closed.wait()
    assert offender.close_code == 1009
    assert "message_too_large" in offender.close_reason
    canvas(bystander)["still"] = "fine"
    await bystander.flush()
    other = await clients.open(server, user="carol")
    assert canvas_of(other.doc) == {"still": "fine"}
    assert not bystander.closed.is_set()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00\x02\x05garbage", "invalid_message: not a Yjs update"),
        (b"\x07", "invalid_message: unknown message type 7"),
        ("text", "invalid_message: send binary"),
    ],
)
async def test_a_malformed_message_closes_only_its_connection(
    crdt_server: RunningServer,
    clients: Clients,
    http: aiohttp.ClientSession,
    frame: bytes | str,
    reason: str,
):
    bystander = await clients.open(crdt_server)
    url = crdt_url(crdt_server.url, "1") + f"?token={crdt_server.token()}"
    async with http.ws_connect(url) as ws:
        if isinstance(frame, str):
            await ws.send_str(frame)
        else:
            await ws.send_bytes(frame)
        async with asyncio.timeout(10):
            while (message := await ws.receive()).type is aiohttp.WSMsgType.BINARY:
                pass
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 1003
        assert reason in message.extra
    canvas(bystander)["k"] = "v"
    await bystander.flush()
    assert not bystander.closed.is_set()


async def test_past_the_document_limit_updates_are_refused_and_the_connection_stays(
    server_factory: ServerFactory, clients: Clients
):
    server = await server_factory(crdt_path=":memory:", crdt_max_doc_bytes=2000)
    writer = await clients.open(server)
    watcher = await clients.open(server, user="bob")
    canvas(writer)["a"] = "x" * 1500
    await writer.flush()
    canvas(writer)["b"] = "y" * 1500
    await writer.flush()
    assert writer.denied == ["document_too_large"]
    assert not writer.closed.is_set()
    await eventually(lambda: "a" in canvas_of(watcher.doc))
    assert "b" not in canvas_of(watcher.doc)
    metrics = server.node.metrics.render().decode()
    assert 'livepush_crdt_updates_total{result="document_too_large"} 1.0' in metrics


async def test_awareness_is_relayed_kept_for_late_joiners_and_removed_on_disconnect(
    crdt_server: RunningServer, clients: Clients
):
    alice = await clients.open(crdt_server)
    bob = await clients.open(crdt_server, user="bob")
    alice.set_awareness({"cursor": [1, 2]})
    await eventually(lambda: bob.peers == {alice.doc.client_id: {"cursor": [1, 2]}})
    carol = await clients.open(crdt_server, user="carol")
    await eventually(lambda: carol.peers == {alice.doc.client_id: {"cursor": [1, 2]}})
    await alice.close()
    await eventually(lambda: bob.peers == {} and carol.peers == {})


async def test_a_client_cannot_change_another_users_awareness(
    crdt_server: RunningServer, clients: Clients, http: aiohttp.ClientSession
):
    from livepush.protocol.crdt import AwarenessEntry, Dialect, encode_awareness

    alice = await clients.open(crdt_server)
    bob = await clients.open(crdt_server, user="bob")
    alice.set_awareness({"name": "Alice"})
    await eventually(lambda: bob.peers == {alice.doc.client_id: {"name": "Alice"}})
    url = crdt_url(crdt_server.url, "1") + f"?token={crdt_server.token('mallory')}"
    async with http.ws_connect(url) as ws:
        forged = encode_awareness([AwarenessEntry(alice.doc.client_id, 99, "null")])
        await ws.send_bytes(Dialect.YJS.awareness(forged))
        await ws.send_bytes(sync_step1(b"\x00"))  # answered once the forgery was handled
        async with asyncio.timeout(10):
            while (await ws.receive_bytes())[:2] != b"\x00\x01":
                pass
    assert bob.peers == {alice.doc.client_id: {"name": "Alice"}}


async def test_concurrent_openings_of_a_document_load_it_once_and_both_sync(
    crdt_server: RunningServer, clients: Clients
):
    rooms = service(crdt_server).rooms
    seed: Doc = Doc()
    seed.get("canvas", type=Map)["stored"] = "before"
    await rooms.store.append("1", seed.get_update())
    load = rooms.store.load

    async def slow_load(doc_id: str) -> Any:
        await asyncio.sleep(0.2)
        return await load(doc_id)

    rooms.store.load = slow_load  # type: ignore[method-assign]
    first, second = await asyncio.gather(
        clients.open(crdt_server), clients.open(crdt_server, user="bob")
    )
    assert canvas_of(first.doc) == canvas_of(second.doc) == {"stored": "before"}
    assert rooms.loads == 1
    canvas(first)["x"] = 1
    await eventually(lambda: canvas_of(second.doc).get("x") == 1)


async def test_an_idle_room_is_unloaded_and_reloads_from_the_store(
    server_factory: ServerFactory, clients: Clients
):
    server = await server_factory(crdt_path=":memory:", crdt_unload_delay=0.05)
    rooms = service(server).rooms
    client = await clients.open(server)
    canvas(client)["k"] = "v"
    await client.flush()
    assert len(rooms) == 1
    await client.close()
    await eventually(lambda: len(rooms) == 0)
    assert "livepush_crdt_rooms 0.0" in server.node.metrics.render().decode()
    again = await clients.open(server)
    assert canvas_of(again.doc) == {"k": "v"}
    assert rooms.loads == 2


async def test_compaction_through_the_endpoint_keeps_every_edit(
    server_factory: ServerFactory, clients: Clients
):
    server = await server_factory(crdt_path=":memory:", crdt_compact_updates=10)
    store = service(server).rooms.store
    writer = await clients.open(server)
    for i in range(60):
        canvas(writer)[f"k{i % 5}"] = i
        canvas(writer)[f"n{i}"] = "x"
    await writer.flush()
    stats = await store.stats("1")
    assert stats.snapshot_bytes > 0 and stats.updates <= 10
    fresh = await clients.open(server, user="bob")
    assert canvas_of(fresh.doc) == canvas_of(writer.doc)
    assert len(canvas_of(fresh.doc)) == 65


async def test_the_endpoint_follows_the_rest_prefix_and_the_query_form(
    server_factory: ServerFactory, clients: Clients, http: aiohttp.ClientSession
):
    server = await server_factory(crdt_path=":memory:", rest_prefix="/n8n/rest")
    first = await clients.open(server)
    canvas(first)["k"] = "v"
    await first.flush()
    token = server.token()
    async with http.ws_connect(f"{server.url}/n8n/rest/crdt?docId=1&token={token}") as ws:
        step1 = await ws.receive_bytes()
        assert decode_state_vector(step1[3:]) == {first.doc.client_id: 1}
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await http.ws_connect(f"{server.url}/rest/crdt/1?token={token}")
    assert caught.value.status == 404


async def test_n8n_framing_on_the_query_path(
    server_factory: ServerFactory, clients: Clients, http: aiohttp.ClientSession
):
    server = await server_factory(crdt_path=":memory:", crdt_n8n_framing=True)
    yjs_client = await clients.open(server)
    canvas(yjs_client)["from"] = "yjs"
    await yjs_client.flush()
    token = server.token("bob")
    async with http.ws_connect(f"{server.url}/rest/crdt?docId=1&token={token}") as ws:
        first = await ws.receive_bytes()
        assert first[0] == 0
        mirror: Doc = Doc()
        mirror.apply_update(first[1:])  # the whole document, raw
        assert canvas_of(mirror) == {"from": "yjs"}
        edit: Doc = Doc()
        edit.get("canvas", type=Map)["from n8n"] = "raw"
        await ws.send_bytes(b"\x00" + edit.get_update())
        await eventually(lambda: canvas_of(yjs_client.doc).get("from n8n") == "raw")
        canvas(yjs_client)["again"] = 1
        async with asyncio.timeout(10):
            relayed = await ws.receive_bytes()
        assert relayed[0] == 0
        mirror.apply_update(relayed[1:])
        assert canvas_of(mirror)["again"] == 1


async def test_token_expiry_closes_the_connection(server_factory: ServerFactory, clients: Clients):
    server = await server_factory(crdt_path=":memory:", jwt_leeway=0)
    client = await clients.open(server, ttl=1)
    async with asyncio.timeout(10):
        await client.closed.wait()
    assert client.close_code == 4001


async def test_shutdown_asks_clients_to_reconnect(crdt_server: RunningServer, clients: Clients):
    client = await clients.open(crdt_server)
    canvas(client)["k"] = "v"
    await client.flush()
    await crdt_server.stop()
    async with asyncio.timeout(10):
        await client.closed.wait()
    assert client.close_code == 1012


async def test_metrics_count_rooms_connections_and_stored_bytes(
    crdt_server: RunningServer, clients: Clients
):
    writer = await clients.open(crdt_server)
    await clients.open(crdt_server, user="rita", read_only=True)
    canvas(writer)["k"] = "v"
    await writer.flush()
    metrics = crdt_server.node.metrics.render().decode()
    assert "livepush_crdt_rooms 1.0" in metrics
    assert 'livepush_crdt_connections{access="write"} 1.0' in metrics
    assert 'livepush_crdt_connections{access="read"} 1.0' in metrics
    assert 'livepush_crdt_updates_total{result="applied"} 1.0' in metrics
    assert "livepush_crdt_stored_bytes_total 0.0" not in metrics


def test_permission_denied_frame_is_what_y_websocket_reads():
    # y-protocols auth.js: varUint messageAuth (2), varUint permissionDenied (0), varString
    assert permission_denied("document_too_large")[:3] == b"\x02\x00\x12"
    assert EMPTY_UPDATE == b"\x00\x00"


async def test_document_connections_per_user_are_bounded(
    server_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Any
):
    server = await server_factory(
        crdt_path=str(tmp_path / "docs.sqlite3"), max_connections_per_user=2
    )
    url = f"{server.url}/rest/crdt/1?token={server.token()}"
    first = await http.ws_connect(url)
    second = await http.ws_connect(url)
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await http.ws_connect(url)
    assert caught.value.status == 429
    # another user is not affected, and a closed connection frees its place
    other = await http.ws_connect(f"{server.url}/rest/crdt/1?token={server.token('bob')}")
    await first.close()
    await eventually(lambda: len(server.runner.app[CRDT_ENDPOINT].connections) == 2)
    third = await http.ws_connect(url)
    for ws in (second, other, third):
        await ws.close()


@pytest.mark.parametrize("tick", [0.0, 0.1])
async def test_awareness_is_coalesced_per_tick(
    server_factory: ServerFactory, clients: Clients, http: aiohttp.ClientSession, tick: float
):
    """100 cursor moves of one client: with a tick, another connection gets about one
    awareness message per tick, carrying the latest state; without, every one."""
    server = await server_factory(crdt_path=":memory:", crdt_awareness_tick=tick)
    watcher = await http.ws_connect(f"{server.url}/rest/crdt/1?token={server.token('bob')}")
    awareness_messages = 0

    async def count() -> None:
        nonlocal awareness_messages
        async for message in watcher:
            if message.type is aiohttp.WSMsgType.BINARY and message.data[:1] == b"\x01":
                awareness_messages += 1

    counting = asyncio.create_task(count())
    alice = await clients.open(server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for x in range(100):
        alice.set_awareness({"cursor": [x, 0]})
        await asyncio.sleep(0.002)
    elapsed = loop.time() - started
    bob = await clients.open(server, user="carol")
    await eventually(lambda: bob.peers.get(alice.doc.client_id) == {"cursor": [99, 0]})
    await asyncio.sleep(2 * tick + 0.05)
    if tick:
        assert awareness_messages <= elapsed / tick + 3, (awareness_messages, elapsed)
    else:
        assert awareness_messages >= 100
    await watcher.close()
    counting.cancel()
