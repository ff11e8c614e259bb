"""The client's pure parts: the event-stream parser, the per-channel position tracker, the
resume position format (checked against the server's own parser)."""

from __future__ import annotations

import pytest

from livepush.client import Position, SseParser, format_positions, parse_positions
from livepush.client.channels import Channels
from livepush.client.inbound import Inbound
from livepush.client.listeners import Listeners
from livepush.client.positions import ChannelTracker, Verdict
from livepush.client.queue import CommandQueue
from livepush.client.transports import Frame
from livepush.protocol.resume import parse_positions as server_parse_positions

STREAM = (
    b"\xef\xbb\xbf:ok\nretry: 2000\n\n"
    b'data: {"type":"connected"}\n\n'
    b"id: push:a|e1|0,workflow:1|e1|3\n\n"
    b": ping\r\n\r\n"
    b'id: workflow:1|e1|4\r\ndata: {"n":4}\r\n\r\n'
    b"event: custom\rdata: line one\rdata: line two\r\r"
    b"id: bad\x00id\ndata: kept\n\n"
    b"retry: soon\nunknown: field\ndata\n\n"
)


def parse_all(chunks: list[bytes]) -> tuple[SseParser, list[tuple[str | None, str, str, bool]]]:
    parser = SseParser()
    events: list[tuple[str | None, str, str, bool]] = []
    for chunk in chunks:
        events.extend((e.data, e.event, e.id, e.has_id) for e in parser.feed(chunk))
    return parser, events


EXPECTED = [
    ('{"type":"connected"}', "message", "", False),
    (None, "message", "push:a|e1|0,workflow:1|e1|3", True),
    ('{"n":4}', "message", "workflow:1|e1|4", True),
    ("line one\nline two", "custom", "workflow:1|e1|4", False),
    ("kept", "message", "workflow:1|e1|4", False),
    ("", "message", "workflow:1|e1|4", False),
]


def test_sse_parser_reads_every_field_and_line_ending() -> None:
    parser, events = parse_all([STREAM])
    assert events == EXPECTED
    assert parser.retry_ms == 2000  # "soon" is not a number: ignored
    assert parser.comments == 2
    assert parser.last_id == "workflow:1|e1|4"


def test_sse_parser_is_independent_of_chunk_boundaries() -> None:
    for split in range(1, len(STREAM)):
        _, events = parse_all([STREAM[:split], STREAM[split:]])
        assert events == EXPECTED, split
    _, events = parse_all([bytes([b]) for b in STREAM])
    assert events == EXPECTED


def test_sse_parser_keeps_an_incomplete_event() -> None:
    parser = SseParser()
    assert parser.feed(b"data: par") == []
    assert parser.feed(b"tial\n") == []
    assert [e.data for e in parser.feed(b"\n")] == ["partial"]


def test_tracker_delivers_in_order_and_drops_duplicates() -> None:
    tracker = ChannelTracker()
    tracker.track("c")
    assert tracker.check("c", "e1", 5) is Verdict.DELIVER  # first seen: where it starts
    assert tracker.check("c", "e1", 6) is Verdict.DELIVER
    assert tracker.check("c", "e1", 6) is Verdict.DUPLICATE
    assert tracker.check("c", "e1", 2) is Verdict.DUPLICATE
    assert tracker.duplicates == 2
    assert tracker.get("c") == Position("e1", 6)


def test_tracker_reports_a_new_epoch_and_a_gap() -> None:
    tracker = ChannelTracker()
    tracker.set("c", Position("e1", 10))
    assert tracker.check("c", "e2", 1) is Verdict.DISCONTINUITY
    assert tracker.get("c") == Position("e2", 1)
    assert tracker.check("c", "e2", 5) is Verdict.DISCONTINUITY  # 2..4 never came
    assert tracker.get("c") == Position("e2", 5)
    assert tracker.check("c", "e2", 6) is Verdict.DELIVER
    assert tracker.discontinuities == 2


def test_tracker_advance_never_moves_back_in_an_epoch() -> None:
    tracker = ChannelTracker()
    tracker.track("c")
    tracker.check("c", "e1", 8)  # an SSE publication before the subscribe reply
    tracker.advance("c", Position("e1", 7))  # the reply's (older) position
    assert tracker.get("c") == Position("e1", 8)
    tracker.advance("c", Position("e1", 9))
    assert tracker.get("c") == Position("e1", 9)
    tracker.advance("c", Position("e2", 0))
    assert tracker.get("c") == Position("e2", 0)


def test_tracker_known_positions_and_forget() -> None:
    tracker = ChannelTracker()
    tracker.set("a", Position("e", 1))
    tracker.track("b")  # position not known yet: not resumable
    tracker.set("c", Position("e", 3))
    assert tracker.known() == {"a": Position("e", 1), "c": Position("e", 3)}
    assert tracker.known(["c", "b"]) == {"c": Position("e", 3)}
    tracker.forget("a")
    assert "a" not in tracker and tracker.known() == {"c": Position("e", 3)}


@pytest.mark.parametrize(
    "positions",
    [
        {},
        {"push:abc123": Position("5f0c2a9e41d3", 17)},
        {"push:abc123": Position("5f0c2a9e41d3", 17), "workflow:42": Position("91be03f0aa21", 3)},
    ],
)
def test_resume_positions_match_the_server_format(positions: dict[str, Position]) -> None:
    text = format_positions(positions)
    parsed = server_parse_positions(text)
    assert {channel: (p.epoch, p.offset) for channel, p in parsed.items()} == positions
    assert parse_positions(text) == positions


async def test_a_malformed_sse_id_is_ignored() -> None:
    channels = Channels(["workflow:1"])
    inbound = Inbound(
        channels,
        CommandQueue(10),
        Listeners(),
        max_output_bytes=1024,
        on_token=lambda token: None,
        on_token_expiring=lambda: None,
    )
    await inbound.handle(Frame(mark="workflow:1|e1|3,workflow:2|e1|not-an-offset"))
    assert channels.tracker.get("workflow:1") is None
    await inbound.handle(Frame(mark="workflow:1|e1|3"))
    assert channels.tracker.get("workflow:1") == Position("e1", 3)
