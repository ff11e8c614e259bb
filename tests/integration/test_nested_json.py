"""JSON nested deeper than a peer may send (`protocol/decoding.py`): every surface answers
`invalid_json` with livepush's error shape, and the connection that sent it stays usable.

Before the bound, a 20 KB message of 10,000 nested arrays raised `RecursionError`: the WebSocket
was closed 1011 with a traceback in the log, and the HTTP endpoints answered a plain-text 500.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.conftest import API_KEY, RunningServer
from tests.integration.helpers import command, receive_json

DEPTH = 10_000


def nested(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


async def test_websocket_command_nested_too_deep_is_invalid_json(
    server: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async with http.ws_connect(server.push_url("tab1", server.token())) as ws:
        assert (await receive_json(ws))["type"] == "connected"
        await ws.send_str('{"type":"presenceUpdate","id":1,"workflowId":"1","state":' + nested())
        error = await receive_json(ws)
        assert error["type"] == "error"
        assert error["data"]["code"] == "invalid_json"
        assert "nested deeper than 64 levels" in error["data"]["message"]
        # deep, but within the bound and well formed: decoded, and answered for what it is
        state = {"a": json.loads(nested(60))}
        reply = await command(
            ws, {"type": "presenceUpdate", "id": 2, "workflowId": "1", "state": state}
        )
        assert reply["type"] in ("reply", "error") and reply["id"] == 2
        assert (await command(ws, {"type": "ping", "id": 3}))["type"] == "reply"
        assert not ws.closed
    assert "RecursionError" not in caplog.text


async def test_sse_post_nested_too_deep_is_a_json_400(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        server.push_url("tab1"),
        data=nested(),
        headers={"Authorization": f"Bearer {server.token()}"},
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/v1/publish",
            '{"type":"x","channel":"workflow:1","data":{"a":' + nested() + "}}",
        ),
        (
            "/api/v1/executions/events",
            '{"type":"nodeExecuteAfter","data":{"executionId":"1","nodeName":"A","data":'
            + nested()
            + "}}",
        ),
        ("/api/v1/publish", nested(100_000)),
    ],
)
async def test_host_api_nested_too_deep_is_a_json_400(
    server: RunningServer, http: aiohttp.ClientSession, path: str, body: str
) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    async with http.post(f"{server.url}{path}", data=body, headers=headers) as response:
        assert response.status == 400, await response.text()
        assert response.content_type == "application/json"
        error = await response.json()
    assert error["error"]["code"] == "invalid_json"
    # the server is fine
    status, _ = await server.publish(http, {"type": "x", "data": {}, "channel": "workflow:1"})
    assert status == 200
