"""`POST /api/v1/publish` and the other HTTP endpoints."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import API_KEY, RunningServer, ServerFactory
from tests.integration.helpers import receive_json


async def post(
    http: aiohttp.ClientSession, server: RunningServer, body: bytes | str, key: str | None = API_KEY
) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with http.post(f"{server.url}/api/v1/publish", data=body, headers=headers) as response:
        return response.status, await response.json()


async def test_single_publish_replies_with_channel_offset_epoch(server: RunningServer, http):
    for expected in (1, 2):
        status, body = await server.publish(
            http, {"type": "workflowUpdated", "data": {"workflowId": "7"}, "channel": "workflow:7"}
        )
        assert status == 200
        [placed] = body["publications"]
        assert placed["channel"] == "workflow:7" and placed["offset"] == expected
        assert placed["epoch"]


async def test_batch_publishes_in_order_and_reports_each(server: RunningServer, http):
    status, body = await server.publish(
        http,
        {
            "messages": [
                {"type": "a", "data": {}, "channel": "execution:1"},
                {"type": "b", "data": {}, "userIds": ["u1", "u2", "u1"]},
                {"type": "c", "data": {}, "broadcast": True},
                {"type": "d", "data": {}, "pushRef": "tab9"},
            ]
        },
    )
    assert status == 200
    channels = [[p["channel"] for p in m["publications"]] for m in body["messages"]]
    assert channels == [["execution:1"], ["user:u1", "user:u2"], ["system"], ["push:tab9"]]


async def test_ephemeral_messages_carry_no_offset(server: RunningServer, http):
    ws = await http.ws_connect(server.push_url("tab1", server.token(), channels="workflow:1"))
    await receive_json(ws)
    status, body = await server.publish(
        http,
        {
            "type": "cursor",
            "data": {"x": 1},
            "channel": "workflow:1",
            "priority": "ephemeral",
            "key": "alice",
        },
    )
    assert status == 200 and body["publications"][0]["offset"] is None
    frame = await receive_json(ws)
    assert frame["type"] == "cursor" and "offset" not in frame
    await ws.close()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", "invalid_json"),
        ("[]", "bad_request"),
        ('{"type": "x", "data": {}}', "bad_request"),
        ('{"type": "x", "data": {}, "channel": "workflow:1", "broadcast": true}', "bad_request"),
        ('{"type": "x", "data": [], "channel": "workflow:1"}', "invalid_message"),
        ('{"type": "x", "channel": "workflow:1"}', "bad_request"),
        ('{"type": "reply", "data": {}, "channel": "workflow:1"}', "invalid_message"),
        ('{"type": "bad type", "data": {}, "channel": "workflow:1"}', "invalid_message"),
        ('{"type": "x", "data": {}, "channel": "weird:1"}', "invalid_channel"),
        ('{"type": "x", "data": {}, "userIds": ["a b"]}', "bad_request"),
        ('{"type": "x", "data": {}, "channel": "workflow:1", "extra": 1}', "bad_request"),
        ('{"messages": []}', "bad_request"),
    ],
)
async def test_bad_bodies_get_400_with_stable_code(server: RunningServer, http, body, code):
    status, reply = await post(http, server, body)
    assert status == 400
    assert reply["error"]["code"] == code
    assert reply["error"]["message"]


async def test_bad_message_in_batch_publishes_nothing(server: RunningServer, http):
    status, reply = await post(
        http,
        server,
        '{"messages": [{"type": "a", "data": {}, "channel": "workflow:1"},'
        ' {"type": "b", "data": {}, "channel": "nope"}]}',
    )
    assert status == 400 and "messages[1]" in reply["error"]["message"]
    status, body = await server.publish(http, {"type": "a", "data": {}, "channel": "workflow:1"})
    assert body["publications"][0]["offset"] == 1


async def test_wrong_or_missing_api_key_is_401(server: RunningServer, http):
    body = '{"type": "x", "data": {}, "broadcast": true}'
    assert (await post(http, server, body, key="wrong"))[0] == 401
    status, reply = await post(http, server, body, key=None)
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"


async def test_oversized_body_is_413(server_factory: ServerFactory, http):
    server = await server_factory(max_publish_bytes=1000)
    status, reply = await post(
        http, server, '{"type": "x", "data": {"b": "' + "x" * 2000 + '"}, "broadcast": true}'
    )
    assert status == 413 and reply["error"]["code"] == "payload_too_large"


async def test_publish_without_configured_key_is_disabled(server_factory: ServerFactory, http):
    server = await server_factory(api_key="")
    status, reply = await post(http, server, '{"type": "x", "data": {}, "broadcast": true}')
    assert status == 503 and reply["error"]["code"] == "publish_disabled"


async def test_health_readiness_metrics_and_openapi(server: RunningServer, http):
    async with http.get(f"{server.url}/healthz") as response:
        assert response.status == 200
    async with http.get(f"{server.url}/readyz") as response:
        assert response.status == 200
    async with http.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "livepush_connections" in await response.text()
    async with http.get(f"{server.url}/api/v1/openapi.json") as response:
        document = await response.json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/publish" in document["paths"]
    schemas = document["components"]["schemas"]
    assert {"PublishMessage", "PublishBatch", "PublishResult", "ErrorBody"} <= set(schemas)
    server.node.draining = True
    async with http.get(f"{server.url}/readyz") as response:
        assert response.status == 503


async def test_in_process_python_api_publishes(server: RunningServer, http):
    ws = await http.ws_connect(server.push_url("tab1", server.token("alice")))
    await receive_json(ws)
    node = server.node
    await node.publish_to_push_ref(
        "tab1",
        "executionStarted",
        {
            "executionId": "1",
            "mode": "manual",
            "startedAt": "2026-11-25T10:00:00.000Z",
            "workflowId": "42",
            "flattedRunData": "[{}]",
        },
    )
    await node.publish_to_users(["alice"], "workflowUpdated", {"workflowId": "1"})
    placed = await node.broadcast("reloadNodeType", {"name": "n", "version": 1})
    assert placed.position is not None and placed.position.offset == 1
    types = [(await receive_json(ws))["type"] for _ in range(3)]
    assert types == ["executionStarted", "workflowUpdated", "reloadNodeType"]
    await ws.close()
