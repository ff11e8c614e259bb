"""The JSON error body every HTTP endpoint uses."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from livepush.protocol.errors import ErrorCode


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
