"""What every endpoint of the host application's API shares: the API key, request bodies that
hold one item or a batch, and publishing that a client hanging up cannot cut in half.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
from aiohttp import web

from livepush.protocol.decoding import JsonDecoder
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.responses import error_response, json_error

log = logging.getLogger(__name__)

#: Host bodies keep their values as raw bytes: the recursion guard, no depth scan.
_decode_head: JsonDecoder[Any] = JsonDecoder(max_depth=None)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def presents_api_key(request: web.Request, api_key: bytes | None) -> bool:
    """Whether the request carries the API key (`Authorization: Bearer <key>`)."""
    authorization = request.headers.get("Authorization", "")
    presented = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    return api_key is not None and hmac.compare_digest(presented.encode(), api_key)


def check_api_key(request: web.Request, api_key: bytes | None) -> web.Response | None:
    """The error response for a request without the API key, or None when it has it."""
    if api_key is None:
        return json_error(503, ErrorCode.PUBLISH_DISABLED, "the server API needs LIVEPUSH_API_KEY")
    if not presents_api_key(request, api_key):
        return json_error(
            401, ErrorCode.INVALID_API_KEY, "send `Authorization: Bearer <LIVEPUSH_API_KEY>`"
        )
    return None


def with_api_key(api_key: bytes | None) -> Callable[[Handler], Handler]:
    """Decorate an endpoint for the host application: the API key first, and a
    `ProtocolError` raised by the handler answered with its code."""

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            refused = check_api_key(request, api_key)
            if refused is not None:
                return refused
            try:
                return await handler(request)
            except ProtocolError as exc:
                return error_response(exc)

        return checked

    return wrap


def api_key_bytes(api_key: str | None) -> bytes | None:
    """The configured API key as compared (None: the API is disabled)."""
    return api_key.encode() if api_key else None


def decode_one_or_batch(
    body: bytes, batch_key: str, one: JsonDecoder[Any], batch: JsonDecoder[Any]
) -> tuple[list[Any], bool]:
    """A request body holding one item, or `{batch_key: [items]}`: (items, whether a batch).
    Bad JSON is `invalid_json`; a wrong shape `bad_request` with msgspec's path."""
    try:
        head: Any = _decode_head.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"body is not valid JSON: {exc}") from exc
    if not isinstance(head, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "body must be a JSON object")
    try:
        if batch_key in head:
            return list(getattr(batch.decode(body), batch_key)), True
        return [one.decode(body)], False
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid request: {exc}") from exc


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
