"""The Redis engine: history in Redis Streams, fan-out through Redis pub/sub, presence, locks,
execution state and CRDT documents in keys with expiry, so any number of nodes (and external
publishers) share channels.

One module per part: `client.py` (connections, key names, the base of the script-running
parts), `streams.py` (the Redis-level message format and the command side shared with
`livepush.publisher`), `broker.py` (pub/sub, gap fill, resync, command forwarding),
`presence.py`, `locks.py`, `executions.py`, `documents.py` (CRDT documents); the Lua scripts
are in `lua/`.
"""

from __future__ import annotations

from livepush.engines.base import Engine
from livepush.engines.documents import StoreSettings
from livepush.engines.redis.broker import RedisBroker
from livepush.engines.redis.client import CLUSTER_CONCURRENCY, Keys, ScriptClient, connect
from livepush.engines.redis.documents import RedisDocumentStore
from livepush.engines.redis.executions import RedisExecutions
from livepush.engines.redis.locks import RedisLocks
from livepush.engines.redis.presence import RedisPresence
from livepush.engines.redis.streams import (
    FORMAT_VERSION,
    RedisStreams,
    WireMessage,
    encode_message,
    new_epoch,
)

__all__ = [
    "CLUSTER_CONCURRENCY",
    "FORMAT_VERSION",
    "Keys",
    "RedisBroker",
    "RedisDocumentStore",
    "RedisExecutions",
    "RedisLocks",
    "RedisPresence",
    "RedisStreams",
    "ScriptClient",
    "WireMessage",
    "connect",
    "encode_message",
    "new_epoch",
    "redis_engine",
]


def redis_engine(
    url: str,
    *,
    history_size: int = 1000,
    history_ttl: float = 300.0,
    stream_ttl: float = 3600.0,
    prefix: str = "livepush",
    cluster: bool = False,
    documents: StoreSettings | None = None,
) -> Engine:
    """The cluster engine."""
    broker = RedisBroker(
        url,
        history_size=history_size,
        history_ttl=history_ttl,
        stream_ttl=stream_ttl,
        prefix=prefix,
        cluster=cluster,
    )
    return Engine(
        broker,
        RedisPresence(url, prefix=prefix, cluster=cluster),
        RedisExecutions(broker.streams),
        RedisLocks(url, prefix=prefix, cluster=cluster),
        RedisDocumentStore(url, documents, prefix=prefix, cluster=cluster),
    )
