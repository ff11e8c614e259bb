"""Fault tests with the Python client against real cluster processes: a node killed with
SIGKILL mid-stream, 100 network cuts across two nodes, a node drained with SIGTERM. Every
client must end with every message exactly once, in order."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from livepush.auth.tokens import mint_token
from livepush.client import Client, Message, Position
from livepush.publisher import Publisher
from tests.client.proxies import tcp_proxy
from tests.client.support import eventually
from tests.cluster.test_cluster import cluster
from tests.conftest import SECRET, redis_url

pytestmark = pytest.mark.timeout(60)

CHANNEL = "workflow:stream"


class Stream:
    """A publisher that streams numbered messages into one channel through Redis (as a worker
    would) until stopped."""

    def __init__(self, publisher: Publisher, pace: float = 0.001) -> None:
        self.publisher = publisher
        self.pace = pace
        self.sent = 0
        self._running = True
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._running:
            self.sent += 1
            await self.publisher.publish(CHANNEL, "tick", {"n": self.sent})
            await asyncio.sleep(self.pace)

    async def until(self, count: int) -> None:
        await eventually(lambda: self.sent >= count, timeout=30, what=f"{count} published")

    async def stop(self) -> int:
        self._running = False
        await self._task
        return self.sent


class Watcher:
    """A `livepush.client.Client` recording what its listeners get."""

    def __init__(self, urls: list[str], push_ref: str, **options: Any) -> None:
        self.received: list[Message] = []
        self.failures: list[tuple[str, Position]] = []
        self.client = Client(
            urls,
            token=lambda: mint_token(SECRET, "alice", workflows=["*"]),
            push_ref=push_ref,
            channels=[CHANNEL],
            backoff_base=0.01,
            backoff_cap=0.1,
            rng=random.Random(push_ref),
            **options,
        )
        self.client.on_channel(CHANNEL, self.received.append)
        self.client.on_recovery_failed(lambda c, p: self.failures.append((c, p)))

    def check(self, total: int) -> None:
        assert [m.offset for m in self.received] == list(range(1, total + 1))
        assert [m.data["n"] for m in self.received] == list(range(1, total + 1))
        assert self.failures == []

    async def done(self, total: int) -> None:
        await eventually(
            lambda: bool(self.received) and self.received[-1].offset == total,
            timeout=15,
            what=f"offset {total} at {self.client.push_ref}",
        )


async def test_clients_of_a_killed_node_resume_on_the_others() -> None:
    url = redis_url()
    prefix = f"lpcluster-{uuid.uuid4().hex[:8]}"
    async with cluster(3, url, prefix) as (a, b, c), Publisher(url, prefix=prefix) as publisher:
        watchers = [Watcher([c.url, a.url, b.url], f"killed-{i}") for i in range(6)]
        for watcher in watchers:
            await watcher.client.connect()
        assert all(w.client.url.startswith(c.url) for w in watchers)
        stream = Stream(publisher)
        await stream.until(1000)
        c.kill()  # SIGKILL while streaming: no close frame, no drain
        await stream.until(2500)
        total = await stream.stop()
        for watcher in watchers:
            await watcher.done(total)
            watcher.check(total)
            assert not watcher.client.url.startswith(c.url)
            assert watcher.client.stats.connections >= 2
            await watcher.client.close()


async def test_hundred_cuts_across_two_nodes() -> None:
    """The client's connection is reset 100 times; each reconnect goes to the next node."""
    url = redis_url()
    prefix = f"lpcluster-{uuid.uuid4().hex[:8]}"
    async with (
        cluster(2, url, prefix) as (a, b),
        Publisher(url, prefix=prefix) as publisher,
        tcp_proxy(a.url) as to_a,
        tcp_proxy(b.url) as to_b,
    ):
        watcher = Watcher([to_a.url, to_b.url], "cuts", connect_timeout=2.0)
        await watcher.client.connect()
        stream = Stream(publisher, pace=0.0005)
        rng = random.Random(3)
        cuts = 0
        while cuts < 100:
            await watcher.client.wait_connected()
            connections = watcher.client.stats.connections
            await asyncio.sleep(rng.uniform(0.0, 0.01))
            if to_a.cut() + to_b.cut():
                cuts += 1
                await eventually(
                    lambda n=connections: watcher.client.stats.connections > n,  # type: ignore[misc]
                    timeout=5,
                    what="a reconnect",
                )
        total = await stream.stop()
        await watcher.done(total)
        watcher.check(total)
        assert to_a.accepted >= 40 and to_b.accepted >= 40  # both nodes served
        assert watcher.client.stats.recovered > 0
        await watcher.client.close()


async def test_drained_node_hands_its_clients_over_without_loss() -> None:
    url = redis_url()
    prefix = f"lpcluster-{uuid.uuid4().hex[:8]}"
    async with cluster(2, url, prefix) as (a, b), Publisher(url, prefix=prefix) as publisher:
        watchers = [Watcher([a.url, b.url], f"drain-{i}") for i in range(4)]
        for watcher in watchers:
            await watcher.client.connect()
        closes: list[int | None] = []
        for watcher in watchers:
            watcher.client.on_state(lambda change: closes.append(change.code))
        stream = Stream(publisher)
        await stream.until(500)
        assert await a.stop(timeout=20) == 0  # SIGTERM: drain
        await stream.until(1500)
        total = await stream.stop()
        for watcher in watchers:
            await watcher.done(total)
            watcher.check(total)
            assert watcher.client.url.startswith(b.url)
            await watcher.client.close()
        assert 1012 in closes
