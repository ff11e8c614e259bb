"""What collaboration keeps per connection (a tab): the rooms it is in, the locks it holds,
and its rate limit of ephemeral updates. Kept by the collaboration feature, keyed by session,
only for tabs that collaborate: a connection that never opens a workflow costs nothing here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from livepush.core.ratelimit import TokenBucket
from livepush.core.session import Session


class Tab:
    """One tab's collaboration state."""

    __slots__ = ("ephemeral_rate", "lock_seen", "locks", "rooms")

    def __init__(self) -> None:
        #: Rooms the tab is in: workflow id -> its presence entry.
        self.rooms: dict[str, dict[str, Any]] = {}
        #: Locks the tab holds: name -> fencing token.
        self.locks: dict[str, int] = {}
        #: When the tab last asked for or confirmed each lock (monotonic seconds).
        self.lock_seen: dict[str, float] = {}
        #: The separate, dropping rate limit of its ephemeral updates; on first use.
        self.ephemeral_rate: TokenBucket | None = None


class Tabs:
    """The collaboration state of this node's tabs, by session."""

    def __init__(self) -> None:
        self._tabs: dict[Session, Tab] = {}

    def get(self, session: Session) -> Tab | None:
        """The tab's state, None when it has none."""
        return self._tabs.get(session)

    def of(self, session: Session) -> Tab:
        """The tab's state, created on first use (a closed tab's is not kept: its close has
        already let go of everything, and nothing may outlive it here)."""
        tab = self._tabs.get(session)
        if tab is None:
            tab = Tab()
            if not session.closed:
                self._tabs[session] = tab
        return tab

    def rooms(self, session: Session) -> dict[str, dict[str, Any]]:
        """The rooms the tab is in (empty when none)."""
        tab = self._tabs.get(session)
        return {} if tab is None else tab.rooms

    def locks(self, session: Session) -> dict[str, int]:
        """The locks the tab holds (empty when none)."""
        tab = self._tabs.get(session)
        return {} if tab is None else tab.locks

    def forget(self, session: Session) -> None:
        """The tab closed: drop its state."""
        self._tabs.pop(session, None)

    def among(self, sessions: Iterable[Session]) -> Iterator[tuple[Session, Tab]]:
        """The tabs with state among these sessions."""
        tabs = self._tabs
        for session in sessions:
            tab = tabs.get(session)
            if tab is not None:
                yield session, tab
