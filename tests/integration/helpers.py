"""Small helpers for reading real client connections in tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> Any:
    """The next text frame as JSON; fails on close or timeout."""
    message = await asyncio.wait_for(ws.receive(), timeout)
    assert message.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {message!r}"
    return json.loads(message.data)


async def receive_until(
    ws: aiohttp.ClientWebSocketResponse, message_type: str, timeout: float = 5.0
) -> Any:
    """Skip frames until one of the given type arrives."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await receive_json(ws, timeout)
            if frame["type"] == message_type:
                return frame


async def expect_close(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> int | None:
    """Read until the server closes; returns the close code."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            if message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
            ):
                return ws.close_code
            if message.type is aiohttp.WSMsgType.ERROR:
                return ws.close_code


async def command(
    ws: aiohttp.ClientWebSocketResponse, body: dict[str, Any], timeout: float = 5.0
) -> Any:
    """Send a command with an id and return the reply or error carrying that id."""
    await ws.send_str(json.dumps(body))
    async with asyncio.timeout(timeout):
        while True:
            frame = await receive_json(ws, timeout)
            if frame.get("id") == body.get("id") and frame["type"] in ("reply", "error"):
                return frame


class SseReader:
    """Reads a raw `text/event-stream` body event by event (no SSE library involved)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.last_id: str | None = None

    async def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next block: {'id':..., 'data':..., 'comments': [...], 'retry':...}."""
        event: dict[str, Any] = {"comments": []}
        data_lines: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data_lines:
                        event["data"] = "\n".join(data_lines)
                    if "id" in event:
                        self.last_id = event["id"]
                    return event
                if line.startswith(":"):
                    event["comments"].append(line[1:])
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data_lines.append(value)
                else:
                    event[name] = value

    async def next_message(self, timeout: float = 5.0) -> Any:
        """The next event that carries data, decoded as JSON."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event(timeout)
                if "data" in event:
                    return json.loads(event["data"])

    async def message_of_type(self, message_type: str, timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next_message(timeout)
                if message["type"] == message_type:
                    return message
