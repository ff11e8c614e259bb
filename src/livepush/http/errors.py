"""The JSON error body every HTTP endpoint uses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import msgspec
from aiohttp import web

from livepush.protocol.errors import ErrorCode

log = logging.getLogger(__name__)


def json_error(status: int, code: ErrorCode, message: str, **extra: Any) -> web.Response:
    """`{"error": {"code", "message", ...}}` with the given status."""
    body = {"error": {"code": code.value, "message": message, **extra}}
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json"
    )


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON reply."""
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json"
    )


def shielded(work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
    """Run `work` to the end even if the request is cancelled (its client hung up), so a
    batch is never left half published; its failure is logged either way (nobody may be left
    to answer)."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_log_failure)
    return asyncio.shield(task)


def _log_failure(task: asyncio.Future[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("publishing failed: %s", exc)
