"""What both push transports check before accepting a connection: origin, token, pushRef,
requested channels and resume positions. A refusal is an HTTP error with a JSON body
`{"error": {"code", "message"}}` (`livepush/responses.py`), never a silent close.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from livepush.auth.tokens import Identity
from livepush.core.node import Node
from livepush.core.session import FrameWriter, Session
from livepush.protocol.channels import parse_channel, validate_push_ref
from livepush.protocol.envelope import StreamPosition
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.resume import parse_positions
from livepush.requests import (
    HandshakeSettings,
    authenticate,
    check_request_origin,
    query_params,
)


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


async def accept(request: web.Request, node: Node, settings: HandshakeSettings) -> Handshake:
    """Run every connection check; raises `ProtocolError` for the caller to turn into HTTP."""
    check_request_origin(request, settings)
    query = query_params(request)
    push_ref = query.get("pushRef")
    if not push_ref:
        raise ProtocolError(ErrorCode.PUSH_REF_REQUIRED, "the pushRef query parameter is required")
    validate_push_ref(push_ref)
    identity = authenticate(request, node.verifier, settings, query)
    channels = [c for c in query.get("channels", "").split(",") if c]
    for channel in channels:
        parse_channel(channel)
    last_event_id = request.headers.get("Last-Event-ID") or query.get("lastEventId", "")
    resume = parse_positions(last_event_id)
    await node.admit(push_ref, identity)
    return Handshake(push_ref, identity, channels, resume)
