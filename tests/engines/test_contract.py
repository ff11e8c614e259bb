"""The engine contract (engines/base.py), one suite for every engine.

To run it against another engine, add a factory to `ENGINE_FACTORIES`; the tests themselves
only use the `Broker` and `PresenceStore` interfaces, unique channel names per test, and wait
for deliveries instead of assuming they are synchronous.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest

from livepush.engines.base import Engine
from livepush.engines.memory import memory_engine
from livepush.engines.redis import redis_engine
from livepush.protocol.envelope import Priority, Publication, StreamPosition
from tests.conftest import redis_url


class EngineFactory(Protocol):
    def __call__(self, *, history_size: int, history_ttl: float) -> Awaitable[Engine]: ...


async def _memory(*, history_size: int, history_ttl: float) -> Engine:
    return memory_engine(history_size=history_size, history_ttl=history_ttl)


async def _redis(*, history_size: int, history_ttl: float) -> Engine:
    # a prefix per engine: two engines in one test (two nodes) share it, tests do not
    return redis_engine(
        redis_url(),
        history_size=history_size,
        history_ttl=history_ttl,
        prefix=f"lptest-{uuid.uuid4().hex[:8]}",
    )


#: Engine name -> factory. The contract suite runs once per entry.
ENGINE_FACTORIES: dict[str, EngineFactory] = {"memory": _memory, "redis": _redis}

MakeEngine = Callable[..., Awaitable[Engine]]


@pytest.fixture(params=sorted(ENGINE_FACTORIES))
async def make_engine(request: pytest.FixtureRequest) -> AsyncIterator[MakeEngine]:
    """Builds started engines of the parametrized kind; closes them all at teardown."""
    factory = ENGINE_FACTORIES[request.param]
    started: list[Engine] = []

    async def make(*, history_size: int = 100, history_ttl: float = 60.0) -> Engine:
        engine = await factory(history_size=history_size, history_ttl=history_ttl)
        await engine.broker.start()
        await engine.presence.start()
        started.append(engine)
        return engine

    yield make
    for engine in reversed(started):
        await engine.presence.close()
        await engine.broker.close()


@pytest.fixture
async def engine(make_engine: MakeEngine) -> Engine:
    return await make_engine()


@pytest.fixture
def channel() -> str:
    return f"workflow:{uuid.uuid4().hex}"


class Received:
    """The node handler: collects every publication the broker hands over."""

    def __init__(self) -> None:
        self.items: list[Publication] = []

    def __call__(self, publication: Publication) -> None:
        self.items.append(publication)

    def on(self, channel: str) -> list[Publication]:
        return [p for p in self.items if p.channel == channel]

    async def wait_for(self, channel: str, count: int, timeout: float = 0.5) -> list[Publication]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.on(channel)) < count:
            if loop.time() > deadline:
                raise AssertionError(f"{len(self.on(channel))} of {count} publications arrived")
            await asyncio.sleep(0.002)
        return self.on(channel)


@pytest.fixture
async def received(engine: Engine) -> Received:
    handler = Received()
    engine.broker.set_handler(handler)
    return handler


def _reliable(channel: str, n: int) -> Publication:
    return Publication(channel, "workflowUpdated", b'{"n":%d}' % n)


def _ephemeral(channel: str, n: int) -> Publication:
    return Publication(
        channel, "collaboratorsChanged", b'{"n":%d}' % n, priority=Priority.EPHEMERAL, key="k"
    )


async def _publish(engine: Engine, channel: str, count: int) -> list[Publication]:
    return [await engine.broker.publish(_reliable(channel, n)) for n in range(1, count + 1)]


# -- publishing ----------------------------------------------------------------------------------


async def test_offsets_start_at_one_and_increase_by_one(engine: Engine, channel: str) -> None:
    placed = await _publish(engine, channel, 5)
    assert [p.offset for p in placed] == [1, 2, 3, 4, 5]


async def test_publish_returns_publication_placed_at_stream_position(
    engine: Engine, channel: str
) -> None:
    placed = await engine.broker.publish(_reliable(channel, 1))
    position = await engine.broker.position(channel)
    assert placed.epoch
    assert placed.position == StreamPosition(position.epoch, 1)
    assert position == StreamPosition(placed.epoch, 1)
    assert (placed.channel, placed.type, placed.data) == (channel, "workflowUpdated", b'{"n":1}')
    assert b'"offset":1' in placed.payload


async def test_epoch_is_stable_across_publications(engine: Engine, channel: str) -> None:
    placed = await _publish(engine, channel, 3)
    assert len({p.epoch for p in placed}) == 1


async def test_handler_receives_publications_in_order(
    engine: Engine, received: Received, channel: str
) -> None:
    await engine.broker.subscribe(channel)
    placed = await _publish(engine, channel, 10)
    delivered = await received.wait_for(channel, 10)
    assert [p.offset for p in delivered] == list(range(1, 11))
    assert [p.data for p in delivered] == [p.data for p in placed]
    assert all(p.epoch == placed[0].epoch for p in delivered)


async def test_ephemeral_publication_reaches_handler_without_offset(
    engine: Engine, received: Received, channel: str
) -> None:
    await engine.broker.subscribe(channel)
    returned = await engine.broker.publish(_ephemeral(channel, 1))
    assert returned.offset is None
    delivered = await received.wait_for(channel, 1)
    assert delivered[0].offset is None
    assert delivered[0].epoch is None
    assert delivered[0].priority is Priority.EPHEMERAL
    assert delivered[0].data == b'{"n":1}'


async def test_ephemeral_publications_consume_no_offset_and_skip_history(
    engine: Engine, received: Received, channel: str
) -> None:
    await engine.broker.subscribe(channel)
    first = await engine.broker.publish(_reliable(channel, 1))
    await engine.broker.publish(_ephemeral(channel, 2))
    await engine.broker.publish(_ephemeral(channel, 3))
    third = await engine.broker.publish(_reliable(channel, 4))
    assert (first.offset, third.offset) == (1, 2)
    await received.wait_for(channel, 4)
    assert (await engine.broker.position(channel)).offset == 2
    recovery = await engine.broker.recover(channel, StreamPosition(first.epoch or "", 0), 100)
    assert recovery.recovered
    assert [p.data for p in recovery.publications] == [b'{"n":1}', b'{"n":4}']


async def test_position_of_unknown_channel_is_offset_zero(engine: Engine, channel: str) -> None:
    position = await engine.broker.position(channel)
    assert position.offset == 0
    assert position.epoch


async def test_position_follows_latest_offset(engine: Engine, channel: str) -> None:
    placed = await _publish(engine, channel, 3)
    assert await engine.broker.position(channel) == StreamPosition(placed[0].epoch or "", 3)


async def test_unsubscribe_is_accepted(engine: Engine, channel: str) -> None:
    await engine.broker.subscribe(channel)
    await engine.broker.unsubscribe(channel)
    assert engine.broker.ready


# -- recovery ------------------------------------------------------------------------------------


async def test_recover_since_top_is_recovered_with_nothing_missed(
    engine: Engine, channel: str
) -> None:
    await _publish(engine, channel, 3)
    top = await engine.broker.position(channel)
    recovery = await engine.broker.recover(channel, top, 100)
    assert recovery.recovered
    assert recovery.publications == []
    assert recovery.position == top


async def test_recover_of_empty_channel_from_zero_is_recovered(
    engine: Engine, channel: str
) -> None:
    start = await engine.broker.position(channel)
    recovery = await engine.broker.recover(channel, start, 100)
    assert recovery.recovered
    assert recovery.publications == []


@pytest.mark.parametrize("since", [0, 1, 4, 6])
async def test_recover_returns_exactly_the_publications_after_since(
    engine: Engine, channel: str, since: int
) -> None:
    placed = await _publish(engine, channel, 7)
    epoch = placed[0].epoch or ""
    recovery = await engine.broker.recover(channel, StreamPosition(epoch, since), 100)
    assert recovery.recovered
    assert [p.offset for p in recovery.publications] == list(range(since + 1, 8))
    assert [p.data for p in recovery.publications] == [p.data for p in placed[since:]]
    assert all(p.epoch == epoch for p in recovery.publications)
    assert recovery.position == StreamPosition(epoch, 7)


async def test_recover_with_wrong_epoch_is_not_recovered(engine: Engine, channel: str) -> None:
    placed = await _publish(engine, channel, 3)
    recovery = await engine.broker.recover(channel, StreamPosition("not-the-epoch", 1), 100)
    assert not recovery.recovered
    assert recovery.publications == []
    assert recovery.position == StreamPosition(placed[0].epoch or "", 3)


async def test_recover_beyond_top_is_not_recovered(engine: Engine, channel: str) -> None:
    placed = await _publish(engine, channel, 3)
    since = StreamPosition(placed[0].epoch or "", 4)
    recovery = await engine.broker.recover(channel, since, 100)
    assert not recovery.recovered
    assert recovery.publications == []
    assert recovery.position.offset == 3


async def test_recover_more_than_history_size_is_not_recovered(
    make_engine: MakeEngine, channel: str
) -> None:
    engine = await make_engine(history_size=3)
    placed = await _publish(engine, channel, 6)
    epoch = placed[0].epoch or ""
    lost = await engine.broker.recover(channel, StreamPosition(epoch, 2), 100)
    assert not lost.recovered
    assert lost.publications == []
    kept = await engine.broker.recover(channel, StreamPosition(epoch, 3), 100)
    assert kept.recovered
    assert [p.offset for p in kept.publications] == [4, 5, 6]


async def test_recover_more_than_limit_is_not_recovered(engine: Engine, channel: str) -> None:
    placed = await _publish(engine, channel, 5)
    epoch = placed[0].epoch or ""
    over = await engine.broker.recover(channel, StreamPosition(epoch, 1), 3)
    assert not over.recovered
    assert over.publications == []
    at_limit = await engine.broker.recover(channel, StreamPosition(epoch, 2), 3)
    assert at_limit.recovered
    assert [p.offset for p in at_limit.publications] == [3, 4, 5]


async def test_recover_after_history_ttl_expired_is_not_recovered(
    make_engine: MakeEngine, channel: str
) -> None:
    engine = await make_engine(history_ttl=0.2)
    placed = await _publish(engine, channel, 2)
    epoch = placed[0].epoch or ""
    fresh = await engine.broker.recover(channel, StreamPosition(epoch, 0), 100)
    assert fresh.recovered
    await asyncio.sleep(0.3)
    expired = await engine.broker.recover(channel, StreamPosition(epoch, 0), 100)
    assert not expired.recovered
    assert expired.publications == []


async def test_recover_after_ttl_returns_only_unexpired_range(
    make_engine: MakeEngine, channel: str
) -> None:
    engine = await make_engine(history_ttl=0.2)
    await _publish(engine, channel, 2)
    await asyncio.sleep(0.3)
    newer = [await engine.broker.publish(_reliable(channel, n)) for n in (3, 4)]
    epoch = newer[0].epoch or ""
    # Offsets 1-2 expired: a position before them cannot be recovered...
    lost = await engine.broker.recover(channel, StreamPosition(epoch, 1), 100)
    assert not lost.recovered
    # ...but one after them still can.
    kept = await engine.broker.recover(
        channel, StreamPosition(epoch, (newer[0].offset or 0) - 1), 100
    )
    assert kept.recovered
    assert [p.data for p in kept.publications] == [b'{"n":3}', b'{"n":4}']


async def test_channels_are_independent(engine: Engine, received: Received, channel: str) -> None:
    other = f"execution:{uuid.uuid4().hex}"
    await engine.broker.subscribe(channel)
    await engine.broker.subscribe(other)
    await _publish(engine, channel, 3)
    placed_other = await engine.broker.publish(_reliable(other, 1))
    assert placed_other.offset == 1
    assert (await engine.broker.position(channel)).offset == 3
    assert (await engine.broker.position(other)).offset == 1
    await received.wait_for(channel, 3)
    await received.wait_for(other, 1)
    assert [p.offset for p in received.on(other)] == [1]
    recovery = await engine.broker.recover(other, StreamPosition(placed_other.epoch or "", 0), 100)
    assert [p.channel for p in recovery.publications] == [other]


# -- presence: pushRef claims --------------------------------------------------------------------


async def test_claim_free_name_succeeds(engine: Engine) -> None:
    assert await engine.presence.claim(f"push:{uuid.uuid4().hex}", "node-a", 10.0)


async def test_claim_by_same_owner_renews(engine: Engine) -> None:
    name = f"push:{uuid.uuid4().hex}"
    assert await engine.presence.claim(name, "node-a", 10.0)
    assert await engine.presence.claim(name, "node-a", 10.0)


async def test_claim_held_by_other_owner_refused(engine: Engine) -> None:
    name = f"push:{uuid.uuid4().hex}"
    assert await engine.presence.claim(name, "node-a", 10.0)
    assert not await engine.presence.claim(name, "node-b", 10.0)


async def test_release_with_zero_ttl_frees_the_name(engine: Engine) -> None:
    name = f"push:{uuid.uuid4().hex}"
    await engine.presence.claim(name, "node-a", 10.0)
    await engine.presence.release(name, "node-a", 0)
    assert await engine.presence.claim(name, "node-b", 10.0)


async def test_release_by_other_owner_keeps_the_claim(engine: Engine) -> None:
    name = f"push:{uuid.uuid4().hex}"
    await engine.presence.claim(name, "node-a", 10.0)
    await engine.presence.release(name, "node-b", 0)
    assert not await engine.presence.claim(name, "node-b", 10.0)


async def test_release_with_ttl_frees_the_name_after_it(engine: Engine) -> None:
    name = f"push:{uuid.uuid4().hex}"
    await engine.presence.claim(name, "node-a", 10.0)
    await engine.presence.release(name, "node-a", 0.1)
    assert not await engine.presence.claim(name, "node-b", 10.0)
    await asyncio.sleep(0.2)
    assert await engine.presence.claim(name, "node-b", 10.0)


async def test_expired_claim_frees_the_name(engine: Engine) -> None:
    name = f"push:{uuid.uuid4().hex}"
    assert await engine.presence.claim(name, "node-a", 0.1)
    assert not await engine.presence.claim(name, "node-b", 10.0)
    await asyncio.sleep(0.2)
    assert await engine.presence.claim(name, "node-b", 10.0)


# -- presence: channel members -------------------------------------------------------------------


async def test_members_of_unknown_channel_are_empty(engine: Engine, channel: str) -> None:
    assert await engine.presence.members(channel) == {}


async def test_join_adds_members_with_their_info(engine: Engine, channel: str) -> None:
    await engine.presence.join(channel, "c1", {"userId": "alice"}, 10.0)
    await engine.presence.join(channel, "c2", {"userId": "bob"}, 10.0)
    assert await engine.presence.members(channel) == {
        "c1": {"userId": "alice"},
        "c2": {"userId": "bob"},
    }


async def test_join_again_refreshes_info(engine: Engine, channel: str) -> None:
    await engine.presence.join(channel, "c1", {"userId": "alice", "v": 1}, 10.0)
    await engine.presence.join(channel, "c1", {"userId": "alice", "v": 2}, 10.0)
    assert await engine.presence.members(channel) == {"c1": {"userId": "alice", "v": 2}}


async def test_leave_removes_member(engine: Engine, channel: str) -> None:
    await engine.presence.join(channel, "c1", {"userId": "alice"}, 10.0)
    await engine.presence.join(channel, "c2", {"userId": "bob"}, 10.0)
    await engine.presence.leave(channel, "c1")
    assert await engine.presence.members(channel) == {"c2": {"userId": "bob"}}
    await engine.presence.leave(channel, "c2")
    assert await engine.presence.members(channel) == {}


async def test_leave_of_absent_member_is_harmless(engine: Engine, channel: str) -> None:
    await engine.presence.leave(channel, "ghost")
    assert await engine.presence.members(channel) == {}


async def test_expired_members_are_excluded(engine: Engine, channel: str) -> None:
    await engine.presence.join(channel, "short", {"userId": "alice"}, 0.1)
    await engine.presence.join(channel, "long", {"userId": "bob"}, 10.0)
    await asyncio.sleep(0.2)
    assert await engine.presence.members(channel) == {"long": {"userId": "bob"}}


async def test_rejoin_extends_membership(engine: Engine, channel: str) -> None:
    await engine.presence.join(channel, "c1", {"userId": "alice"}, 0.15)
    await asyncio.sleep(0.1)
    await engine.presence.join(channel, "c1", {"userId": "alice"}, 0.3)
    await asyncio.sleep(0.1)
    assert "c1" in await engine.presence.members(channel)


async def test_presence_channels_are_independent(engine: Engine, channel: str) -> None:
    other = f"workflow:{uuid.uuid4().hex}"
    await engine.presence.join(channel, "c1", {"userId": "alice"}, 10.0)
    assert await engine.presence.members(other) == {}
