"""The application runner: aiohttp's, with livepush's JSON errors for requests that never reach
the application.

aiohttp answers a request it cannot parse (a request line or header over its limits, such as a
60 KB token in the query string; a malformed request) and a handler that crashed with its own
plain-text page, and logs the offending line, which may hold a token. Here those answers are
livepush's error shape (`responses.py`) with a stable code, and the log line names the error,
never the request's bytes:

- a request line or header field over aiohttp's limit (8190 bytes): 431 `request_too_large`;
- any other malformed request: 400 `bad_request`;
- a handler that raised: 500 `internal_error` (logged with its traceback, as before).

The hook is aiohttp's `RequestHandler.handle_error`, its one method for these answers: the
node's `Server` makes its connection handlers of a subclass that overrides it (no other
behaviour changes; the pin on aiohttp's minor version in pyproject.toml covers it).
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from livepush.protocol.errors import ErrorCode
from livepush.responses import json_error

log = logging.getLogger(__name__)


def describe(status: int, exc: BaseException | None) -> tuple[int, ErrorCode, str]:
    """The status, code and message of an error answered outside the application."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "the limit of"
        return 431, ErrorCode.REQUEST_TOO_LARGE, f"request line or header over {limit} bytes"
    if isinstance(exc, HttpProcessingError) or 400 <= status < 500:
        return 400, ErrorCode.BAD_REQUEST, f"malformed HTTP request ({type(exc).__name__})"
    return 500, ErrorCode.INTERNAL_ERROR, "internal error"


class JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering its errors in livepush's JSON shape."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # (what aiohttp does: the response has begun)
            raise ConnectionError("response already started; cannot send an error")
        status, code, text = describe(status, exc)
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.info("refused a request from %s: %s", request.remote, text)
        response = json_error(status, code, text)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    """aiohttp's low-level server, making `JsonErrorHandler`s."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = JsonErrorHandler  # same layout: the subclass adds no slots
        return handler


class AppRunner(web.AppRunner):
    """`aiohttp.web.AppRunner` whose server answers unparsable requests in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server
