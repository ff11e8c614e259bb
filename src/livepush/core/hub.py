"""Local routing: which of this node's sessions want which channel.

Every lookup is a dict access: a channel's subscribers, a pushRef's session, a user's sessions.
Nothing scans all connections. A `push:<pushRef>` channel has exactly one possible subscriber,
so it is routed through the pushRef index rather than a subscriber set of its own (one set less
per connection).

Fan-out stages a publication on each subscriber and schedules one flush for the end of the
event-loop iteration: everything a connection receives in one iteration goes out in one write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from livepush.core.session import Session
from livepush.protocol.envelope import Publication
from livepush.protocol.errors import CloseCode

log = logging.getLogger(__name__)

_PUSH = "push:"


class Hub:
    """Channel -> sessions, pushRef -> session, user -> sessions, for one node."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[Session, None]] = {}
        self._by_push_ref: dict[str, Session] = {}
        self._by_user: dict[str, dict[Session, None]] = {}
        self._dirty: list[Session] = []
        self._flush_scheduled = False

    def fan_out(self, publication: Publication) -> int:
        """Stage a publication on every local subscriber of its channel; returns how many."""
        channel = publication.channel
        if channel.startswith(_PUSH):
            session = self._by_push_ref.get(channel[5:])
            if session is None or channel not in session.channels:
                return 0
            recipients: tuple[Session, ...] = (session,)
        else:
            subscribers = self._channels.get(channel)
            if not subscribers:
                return 0
            # A copy: a session closed during this loop may unsubscribe.
            recipients = tuple(subscribers)
        dirty = self._dirty
        for session in recipients:
            try:
                if session.stage(publication):
                    dirty.append(session)
            except Exception:
                self._failed(session, publication)
        if dirty and not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (plain function call): write at once
                self.flush()
            else:
                self._flush_scheduled = True
                loop.call_soon(self.flush)
        return len(recipients)

    def flush(self) -> None:
        """Write what was staged on every session in this iteration."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for session in dirty:
            try:
                session.flush()
            except Exception:
                self._failed(session, None)

    @staticmethod
    def _failed(session: Session, publication: Publication | None) -> None:
        # One broken connection must not stop the fan-out to the others.
        log.exception("delivery of %r to %r failed; closing it", publication, session)
        session.close(CloseCode.INTERNAL_ERROR, "internal error", flush=False)

    def add(self, session: Session) -> Session | None:
        """Register a session; returns the session it replaces (same pushRef), if any."""
        previous = self._by_push_ref.get(session.push_ref)
        self._by_push_ref[session.push_ref] = session
        self._by_user.setdefault(session.user_id, {})[session] = None
        return previous

    def remove(self, session: Session) -> list[str]:
        """Unregister a session and its subscriptions; returns channels left with no subscriber."""
        if self._by_push_ref.get(session.push_ref) is session:
            del self._by_push_ref[session.push_ref]
        user_sessions = self._by_user.get(session.user_id)
        if user_sessions is not None:
            user_sessions.pop(session, None)
            if not user_sessions:
                del self._by_user[session.user_id]
        emptied = [ch for ch in list(session.channels) if self.unsubscribe(session, ch)]
        session.channels.clear()
        return emptied

    def subscribe(self, session: Session, channel: str) -> bool:
        """Add a subscription; True when it is the channel's first local subscriber."""
        session.channels.add(channel)
        if channel.startswith(_PUSH):
            return True
        subscribers = self._channels.get(channel)
        first = subscribers is None
        if subscribers is None:
            subscribers = self._channels[channel] = {}
        subscribers[session] = None
        return first

    def unsubscribe(self, session: Session, channel: str) -> bool:
        """Remove a subscription; True when the channel has no local subscriber left."""
        if channel not in session.channels:
            return False
        session.channels.discard(channel)
        if channel.startswith(_PUSH):
            return self._by_push_ref.get(channel[5:]) in (session, None)
        subscribers = self._channels.get(channel)
        if subscribers is None or session not in subscribers:
            return False
        del subscribers[session]
        if not subscribers:
            del self._channels[channel]
            return True
        return False

    def session(self, push_ref: str) -> Session | None:
        """The live session with this pushRef on this node."""
        return self._by_push_ref.get(push_ref)

    def user_session_count(self, user_id: str) -> int:
        """How many sessions a user has on this node."""
        return len(self._by_user.get(user_id, ()))

    def sessions(self) -> Iterator[Session]:
        """Every session on this node."""
        return iter(list(self._by_push_ref.values()))

    def subscribers(self, channel: str) -> int:
        """How many local sessions subscribe to a channel."""
        if channel.startswith(_PUSH):
            session = self._by_push_ref.get(channel[5:])
            return int(session is not None and channel in session.channels)
        return len(self._channels.get(channel, ()))

    @property
    def channel_count(self) -> int:
        """Channels with at least one local subscriber (each connection's own `push:` channel
        counted as one)."""
        return len(self._channels) + len(self._by_push_ref)

    def __len__(self) -> int:
        return len(self._by_push_ref)
