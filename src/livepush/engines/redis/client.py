"""Talking to Redis: connections, the key names of the Redis engine, the guard around every
command, and `ScriptClient`, the base of every engine part that runs Lua scripts on a
connection of its own (streams, presence, locks, documents)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError

from livepush.engines.base import EngineUnavailable

#: Commands in flight at once on a Redis Cluster (also its connections per node).
CLUSTER_CONCURRENCY = 64


def load_script(name: str) -> str:
    """The source of one of the Redis engine's Lua scripts (`engines/redis/lua/<name>`)."""
    return resources.files("livepush.engines.redis").joinpath("lua", name).read_text()


class Keys:
    """Key names of a channel (one Redis Cluster slot per channel, via the hash tag)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def meta(self, channel: str) -> str:
        """The channel's stream position (hash: `e` epoch, `o` newest offset)."""
        return f"{self.prefix}:{{{channel}}}:m"

    def stream(self, channel: str) -> str:
        """The channel's history (stream)."""
        return f"{self.prefix}:{{{channel}}}:s"

    def pubsub(self, channel: str) -> str:
        """The channel's pub/sub channel."""
        return f"{self.prefix}:{{{channel}}}"

    def channel_of(self, pubsub_name: str) -> str:
        """The channel a pub/sub channel name belongs to."""
        return pubsub_name[len(self.prefix) + 2 : -1]

    def claim(self, name: str) -> str:
        """A presence claim (pushRef ownership)."""
        return f"{self.prefix}:c:{{{name}}}"

    def lock(self, name: str) -> tuple[str, str]:
        """A lock (hash) and its fencing token counter."""
        return f"{self.prefix}:l:{{{name}}}", f"{self.prefix}:l:{{{name}}}:f"

    def execution(self, execution_id: str) -> str:
        """An execution's state (hash, in the execution channel's slot)."""
        return f"{self.prefix}:{{execution:{execution_id}}}:x"

    def output(self, execution_id: str, name: str) -> str:
        """A stored node output of an execution."""
        return f"{self.prefix}:{{execution:{execution_id}}}:o:{name}"

    def presence(self, channel: str) -> tuple[str, str]:
        """A channel's presence: expiry per client (sorted set) and info per client (hash)."""
        return f"{self.prefix}:p:{{{channel}}}:z", f"{self.prefix}:p:{{{channel}}}:h"


def connect(
    url: str,
    *,
    cluster: bool = False,
    retries: int = 3,
    name: str | None = None,
    max_connections: int = 32,
) -> aioredis.Redis | RedisCluster:
    """A Redis client. Commands are retried a few times; the pub/sub client gets no retries,
    so that the broker sees every disconnect and resynchronises. At most `max_connections`
    connections (per cluster node) are opened; more concurrent commands wait for one (a
    connection storm of thousands of clients does not open thousands of Redis connections).
    `name` shows in CLIENT LIST."""
    if retries:
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries)
    else:
        retry = Retry(NoBackoff(), 0)
    if cluster:
        return RedisCluster.from_url(
            url, retry=retry, client_name=name, max_connections=CLUSTER_CONCURRENCY
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        retry=retry,
        health_check_interval=10,
        client_name=name,
    )
    return aioredis.Redis.from_pool(pool)


class CommandGuard:
    """Around every Redis command: Redis errors become `EngineUnavailable`, and on a cluster
    at most `CLUSTER_CONCURRENCY` commands run at once (redis-py's cluster client fails,
    rather than waits, when a node's connections run out; the plain client's pool waits)."""

    __slots__ = ("_limit",)

    def __init__(self, cluster: bool) -> None:
        self._limit = asyncio.Semaphore(CLUSTER_CONCURRENCY) if cluster else None

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        try:
            if self._limit is None:
                yield
            else:
                async with self._limit:
                    yield
        except (RedisError, OSError) as exc:
            raise EngineUnavailable(f"Redis: {exc}") from exc


class ScriptClient:
    """A Redis connection (`redis`), the engine's key names and the Lua scripts a part of the
    engine runs on it; every command runs inside `call()`."""

    #: Script name -> source, registered on `start`.
    SCRIPTS: ClassVar[dict[str, str]] = {}

    def __init__(self, url: str, *, prefix: str = "livepush", cluster: bool = False) -> None:
        self.url = url
        self.cluster = cluster
        self.keys = Keys(prefix)
        self.redis: Any = None
        self._scripts: dict[str, Any] = {}
        self.call = CommandGuard(cluster)

    async def start(self) -> None:
        """Connect and register the scripts."""
        self.redis = connect(self.url, cluster=self.cluster)
        self._scripts = {
            name: self.redis.register_script(source) for name, source in self.SCRIPTS.items()
        }

    async def close(self) -> None:
        """Disconnect."""
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.aclose()


def ttl_ms(seconds: float) -> int:
    """A time to live in whole milliseconds, at least 1 (0 would mean "no expiry")."""
    return max(1, int(seconds * 1000))


def to_text(value: bytes | str | None) -> str:
    """A Redis reply as text ("" for nil)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
