"""Deadlines of many sessions on one timer.

Token expiry needs a deadline per connection. A timer per connection costs memory (an event
loop timer handle and its callback, several hundred bytes each) for every idle connection; here
sessions are filed in buckets of `resolution` seconds and one periodic tick handles the due
buckets. Connections whose tokens expire in the same bucket share it.
"""

from __future__ import annotations

import heapq
import math

from livepush.core.session import Session


class Deadlines:
    """Sessions keyed by deadline, with `resolution`-second precision."""

    def __init__(self, resolution: float = 0.25) -> None:
        self.resolution = resolution
        self._buckets: dict[int, dict[Session, None]] = {}
        self._keys: list[int] = []

    def schedule(self, session: Session, when: float) -> None:
        """File (or re-file) a session's deadline at `when` (epoch seconds)."""
        self.cancel(session)
        key = math.ceil(when / self.resolution)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            heapq.heappush(self._keys, key)
        bucket[session] = None
        session.deadline = key

    def cancel(self, session: Session) -> None:
        """Forget a session's deadline, if it has one."""
        key = session.deadline
        if key is None:
            return
        session.deadline = None
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.pop(session, None)
            if not bucket:
                del self._buckets[key]

    def due(self, now: float) -> list[Session]:
        """Remove and return the sessions whose deadline has passed."""
        limit = math.floor(now / self.resolution)
        keys = self._keys
        due: list[Session] = []
        while keys and keys[0] <= limit:
            bucket = self._buckets.pop(heapq.heappop(keys), None)
            if bucket:
                for session in bucket:
                    session.deadline = None
                due.extend(bucket)
        return due

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())
