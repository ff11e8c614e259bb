"""Requests aiohttp refuses before the application sees them are answered in livepush's JSON
error shape with a stable code, and the log never holds the request's bytes (a token)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import RunningServer


async def raw_request(server: RunningServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


async def test_a_60_kb_token_in_the_query_is_a_json_431(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = "eyJ" + "A" * 60_000
    status, headers, body = await raw_request(
        server,
        f"GET /rest/push?pushRef=tab1&token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    )
    assert status == 431
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large"
    assert "AAAA" not in body.decode()
    assert "AAAA" not in caplog.text


async def test_an_oversized_header_is_a_json_431(server: RunningServer) -> None:
    status, _, body = await raw_request(
        server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n"
    )
    assert status == 431
    assert json.loads(body)["error"]["code"] == "request_too_large"


async def test_a_malformed_request_is_a_json_400(server: RunningServer) -> None:
    status, headers, body = await raw_request(server, b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n")
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "bad_request"


async def test_the_node_keeps_serving(server: RunningServer) -> None:
    status, _, _ = await raw_request(
        server, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status == 431
    status, _, _ = await raw_request(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
