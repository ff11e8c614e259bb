"""Property tests against a running server (fixed seed, a few hundred inputs per surface):
random frame sequences on the WebSocket, random bodies on the publish API and the SSE command
POST. Every input is answered with a stable code (a close code, an error reply, a JSON
status), never an internal error, and the node keeps serving. The long run against a live
process is `bench/fuzz.py`."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livepush.protocol.errors import ErrorCode
from tests.conftest import API_KEY, RunningServer, ServerFactory
from tests.integration.test_websocket_frames import RawWebSocket, frame
from tests.protocol.test_fuzz import commands, json_values

CODES = {code.value for code in ErrorCode}
#: Close codes a peer's input may earn (1011, internal error, is not among them).
CLOSE_CODES = {1000, 1002, 1003, 1007, 1008, 1009, 4029}


def examples(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` inputs drawn from `strategy` with a fixed seed (the same on every run)."""
    drawn: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn


frames = st.lists(
    st.builds(
        lambda opcode, payload, fin, mask, rsv: (opcode, payload, fin, mask, rsv),
        st.sampled_from([0, 1, 1, 1, 2, 8, 9, 9, 10, 3, 11]),
        st.one_of(
            st.binary(max_size=130),
            commands.map(lambda c: json.dumps(c).encode()),
            st.sampled_from(
                [
                    b"\xff\xfe",
                    b"\x03\xe8",
                    b"\x03\xe8bye",
                    b'{"type":"ping"',
                    b'{"type":"ping","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
                ]
            ),
        ),
        st.booleans(),
        st.sampled_from([True, True, True, False]),
        st.sampled_from([0, 0, 0, 0, 1, 4]),
    ),
    min_size=1,
    max_size=6,
)


async def outcome(ws: RawWebSocket) -> int | None:
    """After the input, a probe: the close code the server sent, or None if it still answers."""
    ws.send(frame(1, b'{"type":"ping","id":"probe"}'))
    async with asyncio.timeout(5):
        while True:
            try:
                _, opcode, payload = await ws.read_frame()
            except asyncio.IncompleteReadError:
                return 1006  # reset after its close frame was read: cannot happen unread
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
            if opcode == 0x1:
                message = json.loads(payload)
                if message.get("type") == "error":
                    assert message["data"]["code"] in CODES
                if message.get("id") == "probe":
                    return None


async def test_random_frame_sequences(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await server_factory(handshake_rate=0)  # 250 handshakes from one address
    seen: set[int | None] = set()
    for i, sequence in enumerate(examples(frames, 250)):
        ws, status, _, _ = await RawWebSocket.open(server, f"fuzz{i}")
        assert status == 101
        await ws.connected()
        ws.send(
            b"".join(
                frame(opcode, payload, fin=fin, mask=mask, rsv=rsv)
                for opcode, payload, fin, mask, rsv in sequence
            )
        )
        code = await outcome(ws)
        ws.close()
        # a client's own close frame is echoed: its code (1005 when it sent none) is fine
        echoes = {1005} | {
            int.from_bytes(payload[:2], "big")
            for opcode, payload, _, _, _ in sequence
            if opcode == 0x8 and len(payload) >= 2
        }
        assert code in CLOSE_CODES | echoes | {None}, (code, sequence)
        seen.add(code)
    assert None in seen and 1002 in seen  # the inputs reach both ends
    assert "Traceback" not in caplog.text
    assert "error handling a message" not in caplog.text


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "type": json_values | st.sampled_from(["workflowUpdated", "nodeExecuteAfter"]),
            "data": json_values,
            "channel": json_values | st.sampled_from(["workflow:1", "execution:1", "system"]),
            "pushRef": json_values,
            "userIds": json_values,
            "broadcast": json_values,
            "priority": json_values | st.sampled_from(["ephemeral", "reliable"]),
            "messages": st.lists(json_values, max_size=3),
            "events": st.lists(json_values, max_size=3),
        },
    ).map(lambda v: json.dumps(v).encode()),
)


@pytest.mark.parametrize("path", ["/api/v1/publish", "/api/v1/executions/events"])
async def test_random_host_api_bodies(
    server: RunningServer, http: aiohttp.ClientSession, path: str
) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    statuses: set[int] = set()
    for body in examples(bodies, 300):
        async with http.post(f"{server.url}{path}", data=body, headers=headers) as response:
            assert response.status < 500, (response.status, body, await response.text())
            assert response.content_type == "application/json"
            answer = await response.json()
            if response.status >= 400:
                assert answer["error"]["code"] in CODES
            statuses.add(response.status)
    assert 400 in statuses


async def test_random_sse_command_posts(server: RunningServer, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {server.token()}"}
    async with http.get(
        server.push_url("sse-fuzz", server.token()), headers={"Accept": "text/event-stream"}
    ) as stream:
        assert stream.status == 200
        for body in examples(
            st.one_of(bodies, st.lists(commands, max_size=4).map(lambda v: json.dumps(v).encode())),
            250,
        ):
            async with http.post(server.push_url("sse-fuzz"), data=body, headers=headers) as r:
                assert r.status < 500, (r.status, body, await r.text())
                answer = await r.json()
                if r.status >= 400:
                    assert answer["error"]["code"] in CODES
                else:
                    for reply in answer:
                        if reply.get("type") == "error":
                            assert reply["data"]["code"] in CODES
