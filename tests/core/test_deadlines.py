"""Deadlines: many sessions' token expiries on one timer."""

from __future__ import annotations

from livepush.auth.tokens import Grants, Identity
from livepush.core.deadlines import Deadlines
from livepush.core.metrics import Metrics
from livepush.core.session import Session, SessionLimits


class _NullWriter:
    transport = "test"
    tracks_positions = False
    paused = False


def _session(name: str) -> Session:
    return Session(name, Identity("u", None, Grants()), _NullWriter(), SessionLimits(), Metrics())  # type: ignore[arg-type]


def test_sessions_come_due_in_deadline_order_and_only_once() -> None:
    deadlines = Deadlines(resolution=0.25)
    early, late, later = _session("a"), _session("b"), _session("c")
    deadlines.schedule(late, 100.6)
    deadlines.schedule(early, 100.1)
    deadlines.schedule(later, 200.0)
    assert deadlines.due(100.0) == []
    assert deadlines.due(100.3) == [early]
    assert deadlines.due(100.3) == []
    assert deadlines.due(101.0) == [late]
    assert len(deadlines) == 1
    assert later.deadline is not None


def test_rescheduling_moves_and_cancel_forgets() -> None:
    deadlines = Deadlines(resolution=0.25)
    session, other = _session("a"), _session("b")
    deadlines.schedule(session, 10.0)
    deadlines.schedule(session, 20.0)
    deadlines.schedule(other, 10.0)
    deadlines.cancel(other)
    assert other.deadline is None
    assert deadlines.due(15.0) == []
    assert deadlines.due(20.0) == [session]
    assert session.deadline is None
    assert len(deadlines) == 0


def test_sessions_sharing_a_bucket_share_it() -> None:
    deadlines = Deadlines(resolution=1.0)
    sessions = [_session(str(i)) for i in range(100)]
    for session in sessions:
        deadlines.schedule(session, 50.5)
    assert len(deadlines._buckets) == 1
    assert deadlines.due(51.0) == sessions
