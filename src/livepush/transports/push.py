"""The push endpoint, `{rest}/push`: `GET` opens a connection (a WebSocket upgrade, handed to
`transports/websocket.py`, or an event stream, served by `transports/sse.py`); `POST` carries
the commands of an SSE connection, with the same semantics as over WebSocket. The connection
of a POST may be on another node of the cluster: its commands are then run there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import hdrs, web

from livepush.core.node import Node
from livepush.engines.base import EngineUnavailable
from livepush.protocol.commands import MAX_COMMANDS_PER_POST
from livepush.protocol.decoding import decode
from livepush.protocol.errors import CloseCode, ErrorCode, ProtocolError
from livepush.requests import HandshakeSettings, authenticate, check_request_origin, query_params
from livepush.responses import error_response, json_error
from livepush.transports.admission import Admission
from livepush.transports.handshake import accept
from livepush.transports.sse import serve_sse
from livepush.transports.websocket import (
    WebSocketConnection,
    check_upgrade,
    hand_over,
    refusal,
    release_request,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def push_endpoint(
    node: Node,
    settings: HandshakeSettings,
    admission: Admission,
    *,
    max_message_bytes: int,
    sse_retry_ms: int,
) -> Handler:
    """The handler of `GET {rest}/push`: WebSocket upgrades are served here (then handed to a
    `WebSocketConnection`), event streams by `transports/sse.py`, anything else gets a 406.

    Keep-alive pings come from the node's single keep-alive timer; any frame from the client,
    a pong included, proves it alive.
    """

    async def push(request: web.Request) -> web.StreamResponse:
        upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        if not upgrade and "text/event-stream" not in request.headers.get(hdrs.ACCEPT, ""):
            return json_error(
                406,
                ErrorCode.NOT_ACCEPTABLE,
                "open a WebSocket (Upgrade: websocket) or an event stream "
                "(Accept: text/event-stream) on this URL",
            )
        try:
            admission.check(request)
            key = check_upgrade(request) if upgrade else ""
            handshake = await accept(request, node, settings)
        except ProtocolError as exc:
            node.metrics.handshake_failures.labels(exc.code.value).inc()
            return refusal(exc)
        if not upgrade:
            stream = serve_sse(request, node, handshake, retry_ms=sse_retry_ms)
            del handshake  # the stream's coroutine drops its own reference when open
            return await stream
        connection = WebSocketConnection(node, max_message_bytes)
        hand_over(request, connection, key)
        try:
            session = await handshake.open_session(node, connection)
        except EngineUnavailable as exc:
            log.warning("could not open a session for %s: %s", handshake.push_ref, exc)
            connection.close(CloseCode.TRY_AGAIN_LATER, "engine unavailable; reconnect")
            return release_request(request)
        except Exception:
            log.exception("could not open a session for %s", handshake.push_ref)
            connection.close(CloseCode.INTERNAL_ERROR, "internal error")
            return release_request(request)
        connection.start(session)
        return release_request(request)

    return push


def commands_endpoint(
    node: Node, settings: HandshakeSettings, *, max_message_bytes: int
) -> Handler:
    """The handler of `POST {rest}/push`: one command, or an array of them, for the SSE
    connection `pushRef`; answered with the array of replies, in order."""

    async def push_commands(request: web.Request) -> web.StreamResponse:
        try:
            check_request_origin(request, settings)
            query = query_params(request)
            identity = authenticate(request, node.verifier, settings, query)
            push_ref = query.get("pushRef", "")
        except ProtocolError as exc:
            return error_response(exc)
        body = await request.read()
        if len(body) > max_message_bytes * MAX_COMMANDS_PER_POST:
            return json_error(413, ErrorCode.MESSAGE_TOO_LARGE, "too many or too large commands")
        try:
            raw_items = _split_commands(body)
        except ProtocolError as exc:
            return json_error(400, exc.code, exc.message)
        try:
            replies = await node.commands.run_for(push_ref, identity.user_id, raw_items)
        except ProtocolError as exc:
            return error_response(exc)
        return web.Response(body=b"[" + b",".join(replies) + b"]", content_type="application/json")

    return push_commands


def _split_commands(body: bytes) -> list[bytes]:
    """A POST body holds one command object or an array of them; each is decoded alone so
    one bad command gets its own error and the others still run."""
    try:
        parsed = decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"body is not valid JSON: {exc}") from exc
    items = parsed if isinstance(parsed, list) else [parsed]
    if len(items) > MAX_COMMANDS_PER_POST:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"at most {MAX_COMMANDS_PER_POST} commands per request"
        )
    return [msgspec.json.encode(item) for item in items]
