"""Memory-engine specifics beyond the shared contract."""

from __future__ import annotations

import time

from livepush.engines.memory import MemoryBroker
from livepush.protocol.envelope import Publication, StreamPosition


async def test_subscribers_of_unpublished_channels_cost_no_stream() -> None:
    broker = MemoryBroker()
    positions = [await broker.position(f"push:tab{i}") for i in range(100)]
    assert broker.stream_count == 0
    recovery = await broker.recover("push:tab1", positions[1], limit=10)
    assert recovery.recovered
    assert broker.stream_count == 0
    placed = await broker.publish(Publication("push:tab1", "x", b"{}"))
    # The first publication continues from the position subscribers were given.
    assert placed.position == StreamPosition(positions[1].epoch, 1)
    recovery = await broker.recover("push:tab1", positions[1], limit=10)
    assert recovery.recovered
    assert [p.offset for p in recovery.publications] == [1]


async def test_forgetting_idle_streams_changes_the_epoch() -> None:
    broker = MemoryBroker(history_ttl=0.01, stream_ttl=0.01)
    placed = await broker.publish(Publication("workflow:1", "x", b"{}"))
    assert placed.position is not None
    broker._sweep(time.monotonic() + 10)
    assert broker.stream_count == 0
    recovery = await broker.recover("workflow:1", placed.position, limit=10)
    assert not recovery.recovered
    again = await broker.publish(Publication("workflow:1", "x", b"{}"))
    assert again.position is not None
    assert again.position.epoch != placed.position.epoch
