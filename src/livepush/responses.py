"""The JSON responses and errors of every livepush HTTP surface: `{"error": {"code",
"message"}}` with the status each stable error code maps to. Shared by the HTTP API (`http/`)
and the transports (`transports/`).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from aiohttp import hdrs, web

from livepush.protocol.errors import ErrorCode, ProtocolError

#: The HTTP status of a refusal, by error code (anything else is a 400).
HTTP_STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_INVALID: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.ORIGIN_NOT_ALLOWED: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.PUSH_REF_IN_USE: 409,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.TOO_MANY_HANDSHAKES: 429,
    ErrorCode.SERVER_FULL: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.ENGINE_UNAVAILABLE: 503,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.EXECUTION_NOT_FOUND: 404,
    ErrorCode.OUTPUT_NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.REQUEST_TOO_LARGE: 431,
    ErrorCode.NOT_ACCEPTABLE: 406,
}


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


def error_response(exc: ProtocolError) -> web.Response:
    """The HTTP error for a refused request (with `Retry-After` when the error knows when)."""
    response = json_error(HTTP_STATUS.get(exc.code, 400), exc.code, exc.message)
    if exc.retry_after is not None:
        response.headers[hdrs.RETRY_AFTER] = str(max(1, math.ceil(exc.retry_after)))
    return response
