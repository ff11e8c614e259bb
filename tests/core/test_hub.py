"""Local routing: channel -> sessions, pushRef -> session, user -> sessions."""

from __future__ import annotations

import asyncio

import pytest

from livepush.auth.tokens import Grants, Identity
from livepush.core.hub import Hub
from livepush.core.metrics import Metrics
from livepush.core.session import Session, SessionLimits
from livepush.protocol.envelope import Publication
from livepush.protocol.errors import CloseCode
from tests.core.writers import RecordingWriter


def _session(push_ref: str, user: str = "alice", writer: RecordingWriter | None = None) -> Session:
    return Session(
        push_ref,
        Identity(user, None, Grants()),
        writer or RecordingWriter(tagged=False),
        SessionLimits(),
        Metrics(),
    )


def _writes(session: Session) -> list[bytes]:
    writer = session.writer
    assert isinstance(writer, RecordingWriter)
    return writer.writes


def _publication(channel: str = "workflow:1", offset: int = 1) -> Publication:
    return Publication(channel, "workflowUpdated", b"{}", offset=offset, epoch="e")


def test_fan_out_reaches_every_subscriber_of_the_channel_only() -> None:
    hub = Hub()
    a, b, c = _session("a"), _session("b"), _session("c")
    for session in (a, b, c):
        hub.add(session)
    hub.subscribe(a, "workflow:1")
    hub.subscribe(b, "workflow:1")
    hub.subscribe(c, "workflow:2")
    publication = _publication("workflow:1")
    assert hub.fan_out(publication) == 2
    assert _writes(a) == [publication.payload]
    assert _writes(b) == [publication.payload]
    assert _writes(c) == []


def test_fan_out_to_channel_without_subscribers_reaches_nobody() -> None:
    hub = Hub()
    hub.add(_session("a"))
    assert hub.fan_out(_publication("workflow:9")) == 0


def test_fan_out_survives_a_recipient_unsubscribing_during_delivery() -> None:
    hub = Hub()
    holder: list[Session] = []
    writer = RecordingWriter(tagged=False, on_write=lambda: hub.remove(holder[0]))
    leaving = _session("leaving", writer=writer)
    holder.append(leaving)
    staying = _session("staying")
    for session in (leaving, staying):
        hub.add(session)
        hub.subscribe(session, "workflow:1")
    assert hub.fan_out(_publication()) == 2
    assert len(_writes(staying)) == 1
    assert hub.subscribers("workflow:1") == 1


def test_subscribe_reports_first_local_subscriber() -> None:
    hub = Hub()
    a, b = _session("a"), _session("b")
    assert hub.subscribe(a, "workflow:1") is True
    assert hub.subscribe(b, "workflow:1") is False
    assert hub.subscribe(a, "workflow:1") is False  # already subscribed
    assert hub.subscribers("workflow:1") == 2
    assert a.channels == ["workflow:1"]


def test_unsubscribe_reports_last_local_subscriber() -> None:
    hub = Hub()
    a, b = _session("a"), _session("b")
    hub.subscribe(a, "workflow:1")
    hub.subscribe(b, "workflow:1")
    assert hub.unsubscribe(a, "workflow:1") is False
    assert hub.unsubscribe(b, "workflow:1") is True
    assert hub.channel_count == 0
    assert b.channels == []


def test_unsubscribe_from_channel_not_subscribed_is_a_no_op() -> None:
    hub = Hub()
    a, b = _session("a"), _session("b")
    hub.subscribe(b, "workflow:1")
    assert hub.unsubscribe(a, "workflow:1") is False
    assert hub.unsubscribe(a, "workflow:never") is False
    assert hub.subscribers("workflow:1") == 1


def test_add_registers_by_push_ref_and_user() -> None:
    hub = Hub()
    a1, a2, b = _session("t1", "alice"), _session("t2", "alice"), _session("t3", "bob")
    for session in (a1, a2, b):
        assert hub.add(session) is None
    assert len(hub) == 3
    assert hub.session("t2") is a2
    assert hub.session("nope") is None
    assert hub.user_session_count("alice") == 2
    assert hub.user_session_count("bob") == 1
    assert hub.user_session_count("carol") == 0
    assert set(hub.sessions()) == {a1, a2, b}


def test_add_with_same_push_ref_returns_the_replaced_session() -> None:
    hub = Hub()
    old, new = _session("tab"), _session("tab")
    hub.add(old)
    assert hub.add(new) is old
    assert hub.session("tab") is new
    assert len(hub) == 1


def test_removing_replaced_session_keeps_its_successor() -> None:
    hub = Hub()
    old, new = _session("tab"), _session("tab")
    hub.add(old)
    hub.subscribe(old, "workflow:1")
    hub.add(new)
    hub.subscribe(new, "workflow:1")
    assert hub.remove(old) == []  # the successor still subscribes
    assert hub.session("tab") is new
    assert hub.user_session_count("alice") == 1
    assert hub.subscribers("workflow:1") == 1


def test_remove_unregisters_and_returns_emptied_channels() -> None:
    hub = Hub()
    a, b = _session("a", "alice"), _session("b", "bob")
    hub.add(a)
    hub.add(b)
    for channel in ("workflow:1", "workflow:2", "execution:9"):
        hub.subscribe(a, channel)
    hub.subscribe(b, "workflow:1")
    emptied = hub.remove(a)
    # a's own push and user channels go with it; system stays (b is still connected).
    assert sorted(emptied) == ["execution:9", "push:a", "user:alice", "workflow:2"]
    assert a.channels == []
    assert hub.session("a") is None
    assert hub.user_session_count("alice") == 0
    # workflow:1, and b's own push:b, user:bob and system.
    assert hub.channel_count == 4
    assert hub.fan_out(_publication("workflow:2")) == 0
    assert len(hub) == 1


def test_remove_twice_is_harmless() -> None:
    hub = Hub()
    a = _session("a")
    hub.add(a)
    hub.subscribe(a, "workflow:1")
    # The last session takes its own channels (push, system, user) and workflow:1 with it.
    assert hub.remove(a) == ["push:a", "system", "user:alice", "workflow:1"]
    assert hub.remove(a) == []
    assert len(hub) == 0


def test_sessions_snapshot_allows_removal_while_iterating() -> None:
    hub = Hub()
    for name in ("a", "b", "c"):
        hub.add(_session(name))
    for session in hub.sessions():
        hub.remove(session)
    assert len(hub) == 0


def test_channel_count_counts_channels_with_local_subscribers() -> None:
    hub = Hub()
    a = _session("a")
    hub.subscribe(a, "workflow:1")
    hub.subscribe(a, "workflow:2")
    assert hub.channel_count == 2
    assert hub.subscribers("workflow:3") == 0


def test_a_failing_delivery_does_not_stop_fan_out_to_the_others() -> None:
    """A session whose transport raises is closed; every other subscriber still receives."""

    def explode() -> None:
        raise RuntimeError("transport blew up")

    hub = Hub()
    broken = _session("broken", writer=RecordingWriter(tagged=False, on_write=explode))
    healthy = [_session(f"ok{i}") for i in range(3)]
    for session in (healthy[0], broken, *healthy[1:]):
        hub.subscribe(session, "workflow:1")
    assert hub.fan_out(_publication()) == 4
    assert broken.closed
    assert broken.close_code is CloseCode.INTERNAL_ERROR
    for session in healthy:
        assert _writes(session) == [_publication().payload]


async def test_publications_of_one_loop_iteration_leave_in_one_write() -> None:
    """Write coalescing: two publications fanned out in the same iteration reach a connection
    as one write holding both frames in order, flushed by the end of the iteration."""
    hub = Hub()
    session = _session("a")
    hub.subscribe(session, "workflow:1")
    first, second = _publication(offset=1), _publication(offset=2)
    hub.fan_out(first)
    hub.fan_out(second)
    assert _writes(session) == []
    await asyncio.sleep(0)
    assert _writes(session) == [first.payload + second.payload]


async def test_control_message_flushes_staged_publications_first() -> None:
    hub = Hub()
    session = _session("a")
    hub.subscribe(session, "workflow:1")
    hub.fan_out(_publication(offset=1))
    session.send_control(b"reply")
    assert _writes(session) == [_publication(offset=1).payload, b"reply"]
    await asyncio.sleep(0)
    assert len(_writes(session)) == 2


def test_own_channels_are_routed_without_being_stored() -> None:
    """push:, user: and system reach a connection through the hub's indexes; only explicit
    subscriptions live in the session."""
    hub = Hub()
    a1, a2, b = _session("a1", "alice"), _session("a2", "alice"), _session("b", "bob")
    hub.add(a1)
    hub.add(a2)
    hub.add(b)
    assert a1.channels == []
    assert hub.subscribers("push:a2") == 1
    assert hub.subscribers("user:alice") == 2
    assert hub.subscribers("system") == 3
    admin = _session("root", "admin")
    hub.add(admin)
    hub.subscribe(admin, "user:alice")  # an admin watching alice
    assert hub.subscribers("user:alice") == 3
    assert hub.is_own(a1, "user:alice")
    assert not hub.is_own(admin, "user:alice")


@pytest.mark.parametrize(("passes", "writes"), [(1, 2), (2, 1)])
async def test_flush_passes(passes: int, writes: int) -> None:
    """With two passes, a publication staged in the next event-loop pass (a task woken by the
    same I/O poll, e.g. a Redis reply) shares the socket write of the first one."""
    hub = Hub(flush_passes=passes)
    session = _session("a")
    hub.subscribe(session, "workflow:1")
    loop = asyncio.get_running_loop()
    hub.fan_out(_publication(offset=1))
    loop.call_soon(hub.fan_out, _publication(offset=2))
    for _ in range(4):
        await asyncio.sleep(0)
    assert len(_writes(session)) == writes
    assert (
        b"".join(_writes(session))
        == _publication(offset=1).payload + _publication(offset=2).payload
    )
