"""Local routing: which of this node's sessions want which channel.

Every lookup is a dict access: a channel's subscribers, a pushRef's session, a user's sessions.
Nothing scans all connections. A connection's own channels (`push:<pushRef>`,
`user:<userId>`, `system`) are implied by the connection and routed through the pushRef and
user indexes, not stored per connection; only explicit subscriptions are. (An explicit
subscriber of another user's channel, an admin, is routed as well.)

Fan-out stages a publication on each subscriber and schedules one flush for the end of the
event-loop iteration: everything a connection receives in one iteration goes out in one write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator

from livepush.core.session import Session
from livepush.protocol.channels import SYSTEM
from livepush.protocol.envelope import Publication
from livepush.protocol.errors import CloseCode

log = logging.getLogger(__name__)

_PUSH = "push:"
_USER = "user:"


def own_channels(session: Session) -> tuple[str, str, str]:
    """The channels every connection is in: its pushRef's, its user's, and `system`."""
    return (_PUSH + session.push_ref, _USER + session.user_id, SYSTEM)


class Hub:
    """Channel -> sessions, pushRef -> session, user -> sessions, for one node."""

    def __init__(self, *, flush_passes: int = 1) -> None:
        #: Event-loop passes between the first publication staged and the flush: 1 writes at
        #: the end of the pass that staged; 2 lets the tasks that the same I/O poll woke up
        #: (other publish requests, Redis replies and pub/sub messages) stage theirs too, so
        #: they share the writes.
        self.flush_passes = flush_passes
        self._channels: dict[str, dict[Session, None]] = {}
        self._by_push_ref: dict[str, Session] = {}
        self._by_user: dict[str, dict[Session, None]] = {}
        self._dirty: list[Session] = []
        self._flush_scheduled = False
        #: Publication types the node acts on when a session receives one (executions), and
        #: the node's callback, told after the publication is staged on the session.
        self.watched: frozenset[str] = frozenset()
        self.observer: Callable[[Session, Publication], None] = lambda session, pub: None

    def recipients(self, channel: str) -> tuple[Session, ...]:
        """The local sessions a publication in `channel` goes to (a copy: a session closed
        during a fan-out may leave)."""
        if channel.startswith(_PUSH):
            session = self._by_push_ref.get(channel[5:])
            return () if session is None else (session,)
        if channel == SYSTEM:
            return tuple(self._by_push_ref.values())
        explicit = self._channels.get(channel)
        if channel.startswith(_USER):
            own = self._by_user.get(channel[5:])
            if own:
                return tuple(own) + tuple(explicit or ())
        return tuple(explicit) if explicit else ()

    def fan_out(self, publication: Publication) -> int:
        """Stage a publication on every local subscriber of its channel; returns how many."""
        recipients = self.recipients(publication.channel)
        if not recipients:
            return 0
        self.deliver(recipients, publication)
        if publication.type in self.watched:
            self._observe(recipients, publication)
        return len(recipients)

    def deliver(self, recipients: Iterable[Session], publication: Publication) -> None:
        """Stage a publication on these sessions; they write it at the end of the loop
        iteration (with whatever else was staged for them)."""
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
                if self.flush_passes > 1:
                    loop.call_soon(loop.call_soon, self.flush)
                else:
                    loop.call_soon(self.flush)

    def _observe(self, recipients: tuple[Session, ...], publication: Publication) -> None:
        for session in recipients:
            # (a session holding the channel gets it later, from `Session.release`)
            if not session.closed and not session.holding(publication.channel):
                try:
                    self.observer(session, publication)
                except Exception:
                    log.exception("handling %r for %r failed", publication, session)

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
        """Unregister a session and its subscriptions; returns the channels (its own ones
        included) left with no local subscriber."""
        emptied: list[str] = []
        push, user, system = own_channels(session)
        if self._by_push_ref.get(session.push_ref) is session:
            del self._by_push_ref[session.push_ref]
            emptied.append(push)
            if not self._by_push_ref:
                emptied.append(system)
        user_sessions = self._by_user.get(session.user_id)
        if user_sessions is not None and session in user_sessions:
            del user_sessions[session]
            if not user_sessions:
                del self._by_user[session.user_id]
                if not self._channels.get(user):
                    emptied.append(user)
        emptied += [ch for ch in list(session.channels) if self.unsubscribe(session, ch)]
        session.channels.clear()
        return emptied

    def is_own(self, session: Session, channel: str) -> bool:
        """Whether `channel` is one of the session's own channels."""
        return channel in own_channels(session)

    def subscribe(self, session: Session, channel: str) -> bool:
        """Add an explicit subscription (not to the session's own channels); True when it is
        the channel's first local subscriber."""
        if channel not in session.channels:
            session.channels.append(channel)
        subscribers = self._channels.get(channel)
        first = subscribers is None
        if subscribers is None:
            subscribers = self._channels[channel] = {}
        subscribers[session] = None
        return first

    def unsubscribe(self, session: Session, channel: str) -> bool:
        """Remove an explicit subscription; True when the channel has no local subscriber
        left."""
        if channel not in session.channels:
            return False
        session.channels.remove(channel)
        subscribers = self._channels.get(channel)
        if subscribers is None or session not in subscribers:
            return False
        del subscribers[session]
        if not subscribers:
            del self._channels[channel]
            return not (channel.startswith(_USER) and self._by_user.get(channel[5:]))
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
        return len(self.recipients(channel))

    @property
    def channel_count(self) -> int:
        """Channels with at least one local subscriber (a user channel that also has explicit
        subscribers is counted twice: this is a gauge, kept O(1))."""
        system = 1 if self._by_push_ref else 0
        return len(self._channels) + len(self._by_push_ref) + len(self._by_user) + system

    def __len__(self) -> int:
        return len(self._by_push_ref)
