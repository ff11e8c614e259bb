"""Local routing: which of this node's sessions want which channel.

Every lookup is a dict access: a channel's subscribers, a pushRef's session, a user's sessions.
Nothing scans all connections.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from livepush.core.session import Session
from livepush.protocol.envelope import Publication
from livepush.protocol.errors import CloseCode

log = logging.getLogger(__name__)


class Hub:
    """Channel -> sessions, pushRef -> session, user -> sessions, for one node."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[Session, None]] = {}
        self._by_push_ref: dict[str, Session] = {}
        self._by_user: dict[str, dict[Session, None]] = {}

    def fan_out(self, publication: Publication) -> int:
        """Hand a publication to every local subscriber of its channel; returns how many."""
        subscribers = self._channels.get(publication.channel)
        if not subscribers:
            return 0
        # A copy, because a delivery can close a slow session, which may unsubscribe it.
        recipients = tuple(subscribers)
        for session in recipients:
            try:
                session.deliver(publication)
            except Exception:
                # One broken connection must not stop the fan-out to the others.
                log.exception("delivery of %r to %r failed; closing it", publication, session)
                session.close(CloseCode.INTERNAL_ERROR, "internal error", flush=False)
        return len(recipients)

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
        subscribers = self._channels.get(channel)
        first = subscribers is None
        if subscribers is None:
            subscribers = self._channels[channel] = {}
        subscribers[session] = None
        session.channels.add(channel)
        return first

    def unsubscribe(self, session: Session, channel: str) -> bool:
        """Remove a subscription; True when the channel has no local subscriber left."""
        session.channels.discard(channel)
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
        return len(self._channels.get(channel, ()))

    @property
    def channel_count(self) -> int:
        """Channels with at least one local subscriber."""
        return len(self._channels)

    def __len__(self) -> int:
        return len(self._by_push_ref)
