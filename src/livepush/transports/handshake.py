"""What both transports check before accepting a connection: origin, token, pushRef,
requested channels and resume positions. A refusal is an HTTP error with a JSON body
`{"error": {"code", "message"}}`, never a silent close.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from livepush.auth.origin import check_origin
from livepush.auth.tokens import Identity
from livepush.core.node import Node
from livepush.core.session import FrameWriter, Session
from livepush.http.errors import json_error
from livepush.protocol.channels import parse_channel, validate_push_ref
from livepush.protocol.envelope import StreamPosition
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.resume import parse_positions

HTTP_STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_INVALID: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.ORIGIN_NOT_ALLOWED: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.PUSH_REF_IN_USE: 409,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.ENGINE_UNAVAILABLE: 503,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.EXECUTION_NOT_FOUND: 404,
    ErrorCode.OUTPUT_NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.NOT_ACCEPTABLE: 406,
}


@dataclass(frozen=True, slots=True)
class Handshake:
    """An accepted connection request."""

    push_ref: str
    identity: Identity
    channels: list[str]
    resume: dict[str, StreamPosition]

    async def open_session(self, node: Node, writer: FrameWriter) -> Session:
        """Register the accepted connection with the node, over the transport's writer."""
        return await node.open_session(
            self.push_ref, self.identity, writer, channels=self.channels, resume=self.resume
        )


@dataclass(frozen=True, slots=True)
class HandshakeSettings:
    """The settings the handshake reads."""

    allowed_origins: tuple[str, ...] = ()
    trust_proxy: bool = False
    auth_cookie: str = "n8n-auth"


def error_response(exc: ProtocolError) -> web.Response:
    """The HTTP error for a refused request."""
    return json_error(HTTP_STATUS.get(exc.code, 400), exc.code, exc.message)


def check_request_origin(request: web.Request, settings: HandshakeSettings) -> None:
    """Raise `origin_not_allowed` when a browser request comes from a foreign origin."""
    decision = check_origin(request.headers, settings.allowed_origins, settings.trust_proxy)
    if not decision.allowed:
        raise ProtocolError(ErrorCode.ORIGIN_NOT_ALLOWED, decision.message)


def query_params(request: web.Request) -> dict[str, str]:
    """The query parameters, parsed into a plain dict that is dropped after the handshake.

    `request.query` (and `query_string`) would cache parsed copies on the request, which lives
    as long as the connection; with a token in the URL that is a few hundred bytes per
    connection. The raw request line is kept by aiohttp anyway."""
    return dict(parse_qsl(request.raw_path.partition("?")[2]))


def authenticate(
    request: web.Request,
    node: Node,
    settings: HandshakeSettings,
    query: dict[str, str],
) -> Identity:
    """Verify the token from `Authorization: Bearer`, the `token` query parameter or the
    auth cookie, in that order."""
    token = None
    authorization = request.headers.get(hdrs.AUTHORIZATION, "")
    if authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
    if not token:
        token = query.get("token")
    if not token:
        token = request.cookies.get(settings.auth_cookie)
    if not token:
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED,
            "no token: send `Authorization: Bearer <token>`, a `token` query parameter or the "
            f"`{settings.auth_cookie}` cookie",
        )
    return node.verifier.verify(token)


async def accept(request: web.Request, node: Node, settings: HandshakeSettings) -> Handshake:
    """Run every connection check; raises `ProtocolError` for the caller to turn into HTTP."""
    check_request_origin(request, settings)
    query = query_params(request)
    push_ref = query.get("pushRef")
    if not push_ref:
        raise ProtocolError(ErrorCode.PUSH_REF_REQUIRED, "the pushRef query parameter is required")
    validate_push_ref(push_ref)
    identity = authenticate(request, node, settings, query)
    channels = [c for c in query.get("channels", "").split(",") if c]
    for channel in channels:
        parse_channel(channel)
    last_event_id = request.headers.get("Last-Event-ID") or query.get("lastEventId", "")
    resume = parse_positions(last_event_id)
    await node.admit(push_ref, identity)
    return Handshake(push_ref, identity, channels, resume)
