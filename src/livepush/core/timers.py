"""The node's periodic work, each one timer for all connections (never one per connection):

- token expiry: a connection is warned (`tokenExpiring`) `token_expiry_warning` seconds before
  its token expires, so its client can `refresh`, and closed with 4001 when it does expire;
- keep-alive: every connection is pinged each `ping_interval`; one that did not answer the
  previous ping is dropped;
- renewal: this node's shared state in the engine (every connection's presence in its
  channels, its pushRef claim, and the features' state) is renewed before it lapses, so that
  when the node dies it all lapses by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from livepush.core.deadlines import Deadlines
from livepush.core.session import Session
from livepush.core.subscriptions import followed, presence_info
from livepush.engines.base import EngineUnavailable
from livepush.protocol.envelope import control_message, error_message
from livepush.protocol.errors import CloseCode, ErrorCode

if TYPE_CHECKING:
    from livepush.core.node import Node

log = logging.getLogger(__name__)


class Timers:
    """Token expiry, keep-alive and renewal of one node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.deadlines = Deadlines()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the timers."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._tick_deadlines()),
            loop.create_task(self._keepalive()),
            loop.create_task(self._renew()),
        ]

    async def stop(self) -> None:
        """Stop the timers."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- token expiry ------------------------------------------------------------------------

    def schedule_expiry(self, session: Session) -> None:
        """(Re)schedule the warning before the session's token expires."""
        expires_at = session.identity.expires_at
        if expires_at is None:
            self.deadlines.cancel(session)
            return
        warn_at = expires_at - self._node.settings.token_expiry_warning
        self.deadlines.schedule(session, max(warn_at, time.time()))

    def cancel(self, session: Session) -> None:
        """Forget a closed session's deadline."""
        self.deadlines.cancel(session)

    def _on_deadline(self, session: Session) -> None:
        expires_at = session.identity.expires_at
        if session.closed or expires_at is None:
            return
        if not session.warned:
            # Always warned first, even at the last moment, so a client can refresh.
            session.warned = True
            session.send_control(control_message("tokenExpiring", {"expiresAt": expires_at}))
            self.deadlines.schedule(session, expires_at)
        elif expires_at <= time.time() + self.deadlines.resolution:
            session.send_control(error_message(ErrorCode.TOKEN_EXPIRED, "token expired"))
            session.close(CloseCode.TOKEN_EXPIRED, "token expired")
        else:
            self.deadlines.schedule(session, expires_at)

    async def _tick_deadlines(self) -> None:
        while True:
            await asyncio.sleep(self.deadlines.resolution)
            for session in self.deadlines.due(time.time()):
                try:
                    self._on_deadline(session)
                except Exception:
                    log.exception("token expiry of %r failed", session)

    # -- keep-alive --------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """Ping every connection each `ping_interval`; drop the ones that did not answer the
        previous ping."""
        node = self._node
        while True:
            await asyncio.sleep(node.settings.ping_interval)
            for session in node.hub.sessions():
                if session.closed:
                    continue
                try:
                    alive = session.writer.ping()
                except Exception:
                    log.exception("ping of %r failed", session)
                    alive = False
                if not alive:
                    session.close(CloseCode.ABNORMAL_CLOSURE, "no answer to ping", flush=False)

    # -- renewal -----------------------------------------------------------------------------

    async def _renew(self) -> None:
        """Keep this node's shared state alive in the engine: every connection's presence in
        its channels and the features' state (every third of `presence_ttl`), and its pushRef
        claim (every third of `push_ref_ttl`)."""
        node = self._node
        settings = node.settings
        interval = min(settings.presence_ttl, settings.push_ref_ttl) / 3
        claims_renewed = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                sessions = [s for s in node.hub.sessions() if not s.closed]
                if settings.presence:
                    entries = [
                        (channel, s.push_ref, presence_info(s))
                        for s in sessions
                        for channel in s.channels
                        if not followed(s, channel)
                    ]
                    if entries:
                        await node.presence.join_many(entries, settings.presence_ttl)
                for feature in node.features:
                    await feature.renew(sessions)
                if time.monotonic() - claims_renewed >= settings.push_ref_ttl / 3:
                    claims_renewed = time.monotonic()
                    await node.presence.claim_many(
                        [(f"pushref:{s.push_ref}", s.user_id) for s in sessions],
                        settings.push_ref_ttl,
                    )
            except EngineUnavailable as exc:
                log.warning("renewing presence failed (%s); retrying at the next interval", exc)
            except Exception:
                log.exception("renewing presence failed; retrying at the next interval")
