"""Client messages: rate limit, decode, run, reply.

Every message a connection sends (a WebSocket text frame, one command of an SSE POST) goes
through `Commands.handle`: the connection's token bucket (over it: `rate_limited`, far over it:
disconnected), then `protocol.commands.decode_command` (each failure with its own code), then
the handler registered for the command's type. The node's own commands (ping, subscribe,
unsubscribe, refresh, presence, heartbeat) are registered here; features register theirs
through `Node.add`. Lossy commands (cursor moves) skip the token bucket: their handler has a
dropping limit of its own, so a fast mouse never costs its tab an error or its connection.

A command of an SSE connection may arrive at a node that does not hold the connection: the
node then runs it, through the engine, on the node that does (`run_for`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from livepush.core.extensions import CommandHandler, Reply
from livepush.core.ratelimit import RateDecision
from livepush.core.session import Session
from livepush.protocol.commands import (
    COMMANDS,
    Command,
    CommandError,
    Ping,
    Presence,
    Refresh,
    Since,
    Subscribe,
    Unsubscribe,
    decode_command,
    peek_request_id,
)
from livepush.protocol.envelope import StreamPosition, control_message, error_message
from livepush.protocol.errors import CloseCode, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from livepush.core.node import Node

log = logging.getLogger(__name__)


class Commands:
    """The command handlers of one node, and the intake of client messages."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._handlers: dict[str, CommandHandler] = {
            "heartbeat": _ignore,
            "ping": self._ping,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "refresh": self._refresh,
            "presence": self._presence,
        }
        self._lossy: frozenset[str] = frozenset()
        #: What a lossy command's text holds (checked before the rate limit, cheaply).
        self._lossy_marks: tuple[tuple[bytes, str], ...] = ()

    def register(self, command_type: str, handler: CommandHandler, *, lossy: bool = False) -> None:
        """Run commands of `command_type` (one of `protocol.commands.COMMANDS`) with
        `handler`; `lossy`: exempt from the rate limit (see the module docstring)."""
        if command_type not in COMMANDS:
            raise ValueError(f"{command_type!r} is not a command of the protocol")
        if command_type in self._handlers:
            raise ValueError(f"{command_type!r} already has a handler")
        self._handlers[command_type] = handler
        if lossy:
            self._lossy |= {command_type}
            mark = f'"{command_type}"'
            self._lossy_marks += ((mark.encode(), mark),)

    async def handle(self, session: Session, raw: str | bytes, reply: Reply | None = None) -> None:
        """One client message: rate limit, decode, execute. Replies go to `reply` (the SSE
        POST response) or, by default, down the connection itself."""
        reply = reply or session.send_control
        metrics = self._node.metrics
        if self._lossy_marks and self._maybe_lossy(raw):
            command = _decode_quietly(raw)
            if command is not None and command.type in self._lossy:
                metrics.received(command.type, len(raw))
                await self.execute(session, command, reply)
                return
        decision = session.rate.take()
        if decision is not RateDecision.ALLOW:
            metrics.received("rate_limited", len(raw))
        if decision is RateDecision.ABUSIVE:
            self._send_error(
                reply,
                ProtocolError(
                    ErrorCode.RATE_LIMITED, "message rate far over the limit; disconnecting"
                ),
                peek_request_id(raw),
            )
            session.close(CloseCode.RATE_LIMITED, "message rate limit exceeded")
            return
        if decision is RateDecision.LIMITED:
            # answered with the command's id, so a client waiting for it is not left hanging
            self._send_error(
                reply,
                ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"more than {session.rate.rate:g} messages per second; message dropped",
                ),
                peek_request_id(raw),
            )
            return
        try:
            command = decode_command(raw)
        except ProtocolError as exc:
            metrics.received("invalid", len(raw))
            request_id = exc.request_id if isinstance(exc, CommandError) else None
            self._send_error(reply, exc, request_id)
            return
        metrics.received(command.type, len(raw))
        await self.execute(session, command, reply)

    def _maybe_lossy(self, raw: str | bytes) -> bool:
        if isinstance(raw, bytes):
            return any(mark in raw for mark, _ in self._lossy_marks)
        return any(mark in raw for _, mark in self._lossy_marks)

    async def execute(self, session: Session, command: Command, reply: Reply) -> None:
        """Run one decoded command; its reply or error goes to `reply`."""
        handler = self._handlers.get(command.type)
        try:
            if handler is None:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_COMMAND, f"{command.type!r} is not served by this server"
                )
            await handler(session, command, reply)
        except ProtocolError as exc:
            self._send_error(reply, exc, command.id)
        except Exception:
            log.exception("command %s of %r failed", command.type, session)
            self._send_error(
                reply, ProtocolError(ErrorCode.INTERNAL_ERROR, "internal error"), command.id
            )

    def _send_error(self, reply: Reply, exc: ProtocolError, request_id: Any) -> None:
        self._node.metrics.errors.labels(exc.code.value).inc()
        reply(error_message(exc.code, exc.message, request_id))

    # -- commands of SSE connections ---------------------------------------------------------

    async def run_for(self, push_ref: str, user_id: str, messages: list[bytes]) -> list[bytes]:
        """Run client messages for the connection `push_ref` (the SSE POST), on this node or,
        through the engine, on the node of the cluster that holds it; returns the replies."""
        replies = await self.run_local(push_ref, user_id, messages)
        if replies is None:
            replies = await self._node.broker.forward_commands(push_ref, user_id, messages)
        if replies is None:
            raise ProtocolError(
                ErrorCode.SESSION_NOT_FOUND, f"no open connection with pushRef {push_ref!r}"
            )
        return replies

    async def run_local(
        self, push_ref: str, user_id: str, messages: list[bytes]
    ) -> list[bytes] | None:
        """The replies of client messages run for a connection on this node; None when the
        connection is not on this node."""
        session = self._node.hub.session(push_ref)
        if session is None or session.closed:
            return None
        if session.user_id != user_id:
            raise ProtocolError(ErrorCode.FORBIDDEN, "this pushRef belongs to another user")
        replies: list[bytes] = []
        for raw in messages:
            await self.handle(session, raw, replies.append)
        return replies

    # -- the node's own commands -------------------------------------------------------------

    async def _ping(self, session: Session, command: Ping, reply: Reply) -> None:
        reply(control_message("reply", {}, command.id))

    async def _subscribe(self, session: Session, command: Subscribe, reply: Reply) -> None:
        await self._node.subscriptions.subscribe(
            session, command.channel, _position(command.since), reply, command.id
        )

    async def _unsubscribe(self, session: Session, command: Unsubscribe, reply: Reply) -> None:
        if not await self._node.subscriptions.unsubscribe(session, command.channel):
            raise ProtocolError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {command.channel!r}")
        reply(control_message("reply", {"channel": command.channel}, command.id))

    async def _refresh(self, session: Session, command: Refresh, reply: Reply) -> None:
        identity = self._node.refresh(session, command.token)
        reply(control_message("reply", {"expiresAt": identity.expires_at}, command.id))
        # the new token may grant less: what it no longer grants ends here
        await self._node.subscriptions.reauthorize(
            session, ErrorCode.FORBIDDEN.value, "the refreshed token does not grant this channel"
        )

    async def _presence(self, session: Session, command: Presence, reply: Reply) -> None:
        if command.channel not in session.channels:
            raise ProtocolError(ErrorCode.NOT_SUBSCRIBED, f"subscribe to {command.channel!r} first")
        members = await self._node.subscriptions.members(command.channel)
        reply(control_message("reply", members, command.id))


async def _ignore(session: Session, command: Command, reply: Reply) -> None:
    """n8n's heartbeat: accepted, never answered."""


def _decode_quietly(raw: str | bytes) -> Command | None:
    """The message decoded, None when it does not decode (it then takes the usual path)."""
    try:
        return decode_command(raw)
    except ProtocolError:
        return None


def _position(since: Since | None) -> StreamPosition | None:
    return None if since is None else StreamPosition(since.epoch, since.offset)
