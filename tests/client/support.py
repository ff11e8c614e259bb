"""Helpers shared by the client tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from tests.conftest import RunningServer


async def publish_many(
    server: RunningServer,
    http: aiohttp.ClientSession,
    channel: str,
    numbers: range,
    message_type: str = "tick",
) -> None:
    """Publish `{"n": i}` for each number, in batches of up to 1000 (one request each)."""
    items = list(numbers)
    for start in range(0, len(items), 1000):
        body = {
            "messages": [
                {"type": message_type, "data": {"n": n}, "channel": channel}
                for n in items[start : start + 1000]
            ]
        }
        status, reply = await server.publish(http, body)
        assert status == 200, reply


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = ""
) -> None:
    """Poll until `predicate()` is true; fail after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result: Any = predicate()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
