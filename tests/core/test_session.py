"""A session's outbound path: direct writes, the bounded queue under back-pressure, coalescing,
slow-consumer disconnects, recovery hand-over and closing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from livepush.auth.tokens import Grants, Identity
from livepush.core.metrics import Metrics
from livepush.core.session import Session, SessionLimits
from livepush.protocol.envelope import Priority, Publication, StreamPosition
from livepush.protocol.errors import CloseCode
from tests.core.writers import RecordingWriter


def _identity() -> Identity:
    return Identity("alice", None, Grants())


def _session(
    writer: RecordingWriter,
    metrics: Metrics | None = None,
    *,
    max_messages: int = 100,
    max_bytes: int = 1 << 20,
) -> Session:
    limits = SessionLimits(max_queue_messages=max_messages, max_queue_bytes=max_bytes)
    return Session("tab-1", _identity(), writer, limits, metrics or Metrics())


def _reliable(offset: int, channel: str = "workflow:1", epoch: str = "ep") -> Publication:
    return Publication(channel, "workflowUpdated", b'{"n":%d}' % offset, offset=offset, epoch=epoch)


def _ephemeral(value: int, key: str | None = "cursor", channel: str = "workflow:1") -> Publication:
    return Publication(
        channel, "collaboratorsChanged", b'{"v":%d}' % value, priority=Priority.EPHEMERAL, key=key
    )


def _frame(publication: Publication) -> bytes:
    return b"P " + publication.payload


def _drops(metrics: Metrics, reason: str) -> float:
    value: float = metrics.drops.labels(reason)._value.get()
    return value


async def _until(condition: Callable[[], bool], timeout: float = 0.5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def _flushed(session: Session, writer: RecordingWriter) -> None:
    writer.resume()
    await _until(lambda: session.queued == (0, 0))
    await asyncio.sleep(0)


# -- direct writes ----------------------------------------------------------------------------


async def test_publication_written_directly_when_transport_keeps_up() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    publication = _reliable(1)
    session.deliver(publication)
    assert writer.writes == [_frame(publication)]
    assert session.queued == (0, 0)


async def test_control_message_written_directly_when_transport_keeps_up() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.send_control(b'{"type":"reply","id":1,"data":{}}')
    assert writer.writes == [b'C {"type":"reply","id":1,"data":{}}']


async def test_failed_direct_write_marks_session_lost() -> None:
    writer = RecordingWriter()
    writer.gone = True
    session = _session(writer)
    session.deliver(_reliable(1))
    assert session.closed
    assert session.close_code is CloseCode.GOING_AWAY
    assert writer.closed_with == []  # nothing to close: the connection is already gone


async def test_closed_session_ignores_deliveries_and_controls() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.close(CloseCode.NORMAL, "bye")
    session.deliver(_reliable(1))
    session.send_control(b"{}")
    assert writer.writes == []


# -- the queue under back-pressure --------------------------------------------------------------


async def test_publications_queued_while_paused_then_flushed_in_order() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    publications = [_reliable(i) for i in range(1, 6)]
    for publication in publications:
        session.deliver(publication)
    await asyncio.sleep(0.01)
    assert writer.writes == []
    assert session.queued == (5, sum(len(p.payload) for p in publications))
    assert writer.drain_calls == 1
    await _flushed(session, writer)
    assert writer.writes == [_frame(p) for p in publications]


async def test_deliveries_after_backlog_stay_behind_it_even_when_unpaused() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    first = _reliable(1)
    session.deliver(first)
    writer.paused = False  # transport accepts again, but the queue has not been flushed yet
    second = _reliable(2)
    session.deliver(second)
    assert writer.writes == []  # no overtaking the queued frame
    await _flushed(session, writer)
    assert writer.writes == [_frame(first), _frame(second)]


async def test_control_messages_interleave_in_order_with_queued_publications() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    session.deliver(_reliable(1))
    session.send_control(b'{"type":"reply","id":1}')
    session.deliver(_ephemeral(1, key=None))
    session.send_control(b'{"type":"reply","id":2}')
    session.deliver(_reliable(2))
    await _flushed(session, writer)
    assert writer.writes == [
        _frame(_reliable(1)),
        b'C {"type":"reply","id":1}',
        _frame(_ephemeral(1, key=None)),
        b'C {"type":"reply","id":2}',
        _frame(_reliable(2)),
    ]


async def test_flush_resumes_waiting_when_transport_pauses_again() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    session.deliver(_reliable(1))
    session.deliver(_reliable(2))
    writer.resume()
    await _until(lambda: len(writer.writes) == 2)
    writer.pause()
    session.deliver(_reliable(3))
    await asyncio.sleep(0.01)
    assert len(writer.writes) == 2
    await _flushed(session, writer)
    assert writer.writes[-1] == _frame(_reliable(3))


async def test_queued_publication_latency_is_observed_when_written() -> None:
    writer = RecordingWriter()
    metrics = Metrics()
    session = _session(writer, metrics)
    writer.pause()
    session.deliver(_reliable(1))
    session.deliver(_reliable(2))
    await _flushed(session, writer)
    assert metrics.latency._sum.get() >= 0.0
    count = metrics.registry.get_sample_value("livepush_publish_to_write_seconds_count")
    assert count == 2


async def test_connection_lost_during_drain_empties_queue() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    session.deliver(_reliable(1))
    session.deliver(_reliable(2))
    await asyncio.sleep(0)
    writer.lose_connection()
    await _until(lambda: session.closed)
    assert session.queued == (0, 0)
    assert session.close_code is CloseCode.GOING_AWAY
    assert writer.writes == []


# -- ephemeral coalescing and dropping ----------------------------------------------------------


async def test_ephemeral_coalescing_keeps_latest_value_in_first_position() -> None:
    writer = RecordingWriter()
    metrics = Metrics()
    session = _session(writer, metrics)
    writer.pause()
    session.deliver(_ephemeral(1, key="cursor"))
    session.deliver(_reliable(1))
    session.deliver(_ephemeral(2, key="cursor"))
    session.deliver(_ephemeral(3, key="cursor"))
    assert session.queued[0] == 2
    assert _drops(metrics, "coalesced") == 2
    await _flushed(session, writer)
    assert writer.writes == [_frame(_ephemeral(3, key="cursor")), _frame(_reliable(1))]


async def test_coalescing_is_per_channel_and_key() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    session.deliver(_ephemeral(1, key="a"))
    session.deliver(_ephemeral(2, key="b"))
    session.deliver(_ephemeral(3, key="a", channel="workflow:2"))
    session.deliver(_ephemeral(4, key="a"))
    await _flushed(session, writer)
    assert writer.writes == [
        _frame(_ephemeral(4, key="a")),
        _frame(_ephemeral(2, key="b")),
        _frame(_ephemeral(3, key="a", channel="workflow:2")),
    ]


async def test_ephemeral_without_key_is_never_coalesced() -> None:
    writer = RecordingWriter()
    metrics = Metrics()
    session = _session(writer, metrics)
    writer.pause()
    session.deliver(_ephemeral(1, key=None))
    session.deliver(_ephemeral(2, key=None))
    assert session.queued[0] == 2
    assert _drops(metrics, "coalesced") == 0
    await _flushed(session, writer)


async def test_reliable_publications_are_never_coalesced() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    first = Publication("workflow:1", "t", b"{}", offset=1, epoch="e", key="same")
    second = Publication("workflow:1", "t", b"{}", offset=2, epoch="e", key="same")
    session.deliver(first)
    session.deliver(second)
    assert session.queued[0] == 2
    await _flushed(session, writer)
    assert writer.writes == [_frame(first), _frame(second)]


async def test_coalescing_after_key_was_flushed_queues_a_new_entry() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    session.deliver(_ephemeral(1))
    await _flushed(session, writer)
    writer.pause()
    session.deliver(_ephemeral(2))
    session.deliver(_ephemeral(3))
    await _flushed(session, writer)
    assert writer.writes == [_frame(_ephemeral(1)), _frame(_ephemeral(3))]


async def test_full_queue_drops_new_ephemeral_publication() -> None:
    writer = RecordingWriter()
    metrics = Metrics()
    session = _session(writer, metrics, max_messages=3)
    writer.pause()
    for offset in (1, 2, 3):
        session.deliver(_reliable(offset))
    session.deliver(_ephemeral(1, key=None))
    assert session.queued[0] == 3
    assert not session.closed
    assert _drops(metrics, "queue_full") == 1
    await _flushed(session, writer)
    assert writer.writes == [_frame(_reliable(i)) for i in (1, 2, 3)]


async def test_full_queue_drops_queued_ephemerals_before_reliable_ones() -> None:
    writer = RecordingWriter()
    metrics = Metrics()
    session = _session(writer, metrics, max_messages=4)
    writer.pause()
    session.deliver(_ephemeral(1, key="a"))
    session.deliver(_reliable(1))
    session.deliver(_ephemeral(2, key=None))
    session.deliver(_reliable(2))
    session.deliver(_reliable(3))  # over the bound: both ephemerals make room
    assert not session.closed
    assert session.queued[0] == 3
    assert _drops(metrics, "queue_full") == 2
    session.deliver(_ephemeral(3, key="a"))  # the key's queued entry is gone: queued anew
    assert session.queued[0] == 4
    await _flushed(session, writer)
    assert writer.writes == [
        _frame(_reliable(1)),
        _frame(_reliable(2)),
        _frame(_reliable(3)),
        _frame(_ephemeral(3, key="a")),
    ]


async def test_byte_bound_drops_ephemerals_first() -> None:
    writer = RecordingWriter()
    metrics = Metrics()
    big = Publication(
        "workflow:1", "t", b'{"x":"' + b"a" * 500 + b'"}', priority=Priority.EPHEMERAL
    )
    reliable = _reliable(1)
    session = _session(writer, metrics, max_bytes=len(big.payload) + len(reliable.payload))
    writer.pause()
    session.deliver(big)
    session.deliver(reliable)
    session.deliver(_reliable(2))
    assert not session.closed
    assert _drops(metrics, "queue_full") == 1
    await _flushed(session, writer)
    assert writer.writes == [_frame(reliable), _frame(_reliable(2))]


async def test_coalesced_replacement_respects_byte_bound() -> None:
    writer = RecordingWriter()
    session = _session(writer, max_bytes=200)
    writer.pause()
    try:
        session.deliver(_ephemeral(1, key="k"))
        large = Publication(
            "workflow:1", "t", b'{"x":"' + b"a" * 1000 + b'"}', priority=Priority.EPHEMERAL, key="k"
        )
        session.deliver(large)
        assert session.queued[1] <= 200
    finally:
        writer.resume()
        await asyncio.sleep(0.01)


# -- slow consumers ----------------------------------------------------------------------------


async def test_reliable_overflow_closes_slow_consumer() -> None:
    writer = RecordingWriter()
    metrics = Metrics()
    session = _session(writer, metrics, max_messages=3)
    writer.pause()
    for offset in (1, 2, 3):
        session.deliver(_reliable(offset))
    session.deliver(_reliable(4))
    assert session.closed
    assert session.close_code is CloseCode.SLOW_CONSUMER
    assert len(writer.closed_with) == 1
    assert writer.closed_with[0][0] is CloseCode.SLOW_CONSUMER
    assert "slow consumer" in writer.closed_with[0][1]
    assert session.queued == (0, 0)
    assert _drops(metrics, "slow_consumer") == 4
    writer.resume()
    await asyncio.sleep(0.01)
    assert writer.writes == []  # the backlog is abandoned, not flushed


async def test_reliable_byte_overflow_closes_slow_consumer() -> None:
    writer = RecordingWriter()
    first = _reliable(1)
    session = _session(writer, max_bytes=len(first.payload) + 5)
    writer.pause()
    session.deliver(first)
    session.deliver(_reliable(2))
    assert session.closed
    assert writer.closed_with[0][0] is CloseCode.SLOW_CONSUMER
    writer.resume()


async def test_control_message_overflow_closes_slow_consumer() -> None:
    writer = RecordingWriter()
    session = _session(writer, max_messages=2)
    writer.pause()
    session.send_control(b"{}")
    session.send_control(b"{}")
    session.send_control(b"{}")
    assert session.close_code is CloseCode.SLOW_CONSUMER
    writer.resume()


async def test_ephemeral_overflow_does_not_close_the_session() -> None:
    writer = RecordingWriter()
    session = _session(writer, max_messages=2)
    writer.pause()
    for value in range(10):
        session.deliver(_ephemeral(value, key=None))
    assert not session.closed
    assert session.queued[0] == 2
    await _flushed(session, writer)


# -- closing ------------------------------------------------------------------------------------


async def test_close_without_backlog_closes_writer_at_once() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.close(CloseCode.TOKEN_EXPIRED, "token expired")
    assert session.closed
    assert writer.closed_with == [(CloseCode.TOKEN_EXPIRED, "token expired")]


async def test_close_with_flush_waits_for_the_queue() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    session.deliver(_reliable(1))
    session.send_control(b'{"type":"disconnect"}')
    session.close(CloseCode.GOING_AWAY, "shutting down")
    assert not session.closed
    assert writer.closed_with == []
    await _flushed(session, writer)
    await _until(lambda: session.closed)
    assert writer.writes == [_frame(_reliable(1)), b'C {"type":"disconnect"}']
    assert writer.closed_with == [(CloseCode.GOING_AWAY, "shutting down")]


async def test_close_without_flush_abandons_the_queue() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    session.deliver(_reliable(1))
    session.close(CloseCode.REPLACED, "replaced", flush=False)
    assert session.closed
    assert writer.closed_with == [(CloseCode.REPLACED, "replaced")]
    writer.resume()
    await asyncio.sleep(0.01)
    assert writer.writes == []


async def test_unflushed_close_overrides_a_pending_flushed_close() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    writer.pause()
    session.deliver(_reliable(1))
    session.close(CloseCode.GOING_AWAY, "draining")
    session.close(CloseCode.SLOW_CONSUMER, "too slow", flush=False)
    assert session.closed
    assert writer.closed_with == [(CloseCode.SLOW_CONSUMER, "too slow")]
    writer.resume()


async def test_second_close_is_ignored() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.close(CloseCode.NORMAL, "one")
    session.close(CloseCode.FORBIDDEN, "two")
    session.close(CloseCode.FORBIDDEN, "three", flush=False)
    assert writer.closed_with == [(CloseCode.NORMAL, "one")]
    assert session.close_code is CloseCode.NORMAL


# -- recovery hand-over -------------------------------------------------------------------------


async def test_release_delivers_missed_then_newer_held_publications() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.hold("workflow:1")
    # Live publications arrive while the missed ones are being fetched.
    for offset in (4, 5, 6):
        session.deliver(_reliable(offset))
    assert writer.writes == []
    missed = [_reliable(offset) for offset in (2, 3, 4, 5)]
    session.release("workflow:1", missed, after_offset=1)
    # One coalesced write holding every frame, in order.
    assert writer.writes == [b"".join(_frame(_reliable(i)) for i in (2, 3, 4, 5, 6))]


async def test_release_without_missed_drops_held_at_or_before_after_offset() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.hold("workflow:1")
    for offset in (3, 4, 5):
        session.deliver(_reliable(offset))
    session.release("workflow:1", [], after_offset=4)
    assert writer.writes == [_frame(_reliable(5))]


async def test_release_keeps_held_ephemeral_publications() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.hold("workflow:1")
    session.deliver(_reliable(2))
    session.deliver(_ephemeral(1, key=None))
    session.release("workflow:1", [_reliable(2)], after_offset=1)
    assert writer.writes == [_frame(_reliable(2)) + _frame(_ephemeral(1, key=None))]


async def test_release_with_unknown_position_delivers_every_held_publication() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.hold("workflow:1")
    session.deliver(_reliable(7))
    session.release("workflow:1", [], after_offset=None)
    assert writer.writes == [_frame(_reliable(7))]


async def test_hold_only_affects_its_channel() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.hold("workflow:1")
    other = _reliable(1, channel="workflow:2")
    session.deliver(other)
    assert writer.writes == [_frame(other)]
    session.release("workflow:1", [], after_offset=0)


async def test_holding_two_channels_releases_each_independently() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.hold("workflow:1")
    session.hold("workflow:2")
    session.deliver(_reliable(1, channel="workflow:1"))
    session.deliver(_reliable(1, channel="workflow:2"))
    session.release("workflow:2", [], after_offset=0)
    assert writer.writes == [_frame(_reliable(1, channel="workflow:2"))]
    session.deliver(_reliable(2, channel="workflow:1"))  # still held
    assert len(writer.writes) == 1
    session.release("workflow:1", [], after_offset=0)
    assert writer.writes[1:] == [
        _frame(_reliable(1, channel="workflow:1")) + _frame(_reliable(2, channel="workflow:1")),
    ]
    session.deliver(_reliable(3, channel="workflow:1"))  # no longer held
    assert writer.writes[-1] == _frame(_reliable(3, channel="workflow:1"))


async def test_released_publications_queue_in_order_under_back_pressure() -> None:
    writer = RecordingWriter()
    session = _session(writer)
    session.hold("workflow:1")
    session.deliver(_reliable(3))
    writer.pause()
    session.release("workflow:1", [_reliable(2)], after_offset=1)
    await _flushed(session, writer)
    assert writer.writes == [_frame(_reliable(2)), _frame(_reliable(3))]


# -- position marks -----------------------------------------------------------------------------


async def test_mark_written_for_writers_that_track_positions() -> None:
    writer = RecordingWriter(tracks_positions=True)
    session = _session(writer)
    session.mark({"workflow:1": StreamPosition("ep", 3)})
    session.mark({"workflow:1": None})
    assert writer.writes == [b"M workflow:1 ep/3", b"M workflow:1 -"]


async def test_mark_skipped_for_writers_that_do_not_track_positions() -> None:
    writer = RecordingWriter(tracks_positions=False)
    session = _session(writer)
    session.mark({"workflow:1": StreamPosition("ep", 3)})
    writer.pause()
    session.mark({"workflow:1": StreamPosition("ep", 4)})
    assert writer.writes == []
    assert session.queued == (0, 0)


async def test_marks_queue_in_stream_order_and_take_no_bytes() -> None:
    writer = RecordingWriter(tracks_positions=True)
    session = _session(writer)
    writer.pause()
    session.deliver(_reliable(1))
    session.mark({"workflow:1": StreamPosition("ep", 1)})
    session.deliver(_reliable(2))
    assert session.queued == (3, len(_reliable(1).payload) + len(_reliable(2).payload))
    await _flushed(session, writer)
    assert writer.writes == [_frame(_reliable(1)), b"M workflow:1 ep/1", _frame(_reliable(2))]


async def test_session_exposes_user_and_push_ref() -> None:
    session = _session(RecordingWriter())
    assert session.user_id == "alice"
    assert session.push_ref == "tab-1"
    assert "tab-1" in repr(session)


async def test_one_mark_records_several_channels_at_once() -> None:
    writer = RecordingWriter(tracks_positions=True)
    session = _session(writer)
    session.mark({"workflow:1": StreamPosition("ep", 3), "system": StreamPosition("ep", 0)})
    assert writer.writes == [b"M workflow:1 ep/3, system ep/0"]
    session.mark({})
    assert len(writer.writes) == 1
