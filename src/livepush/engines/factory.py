"""The one place that turns settings into an engine: `EngineSettings` names the kind and the
settings of its parts, `build_engine` builds all of them (broker, presence, executions, locks,
documents)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from livepush.engines.base import Engine
from livepush.engines.documents import StoreSettings
from livepush.engines.memory import memory_engine
from livepush.engines.redis import redis_engine
from livepush.engines.sqlite import DEFAULT_PATH


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Which engine, and the settings of its parts (the defaults make a single node)."""

    #: "memory": one node, nothing to install; "redis": many nodes sharing one Redis.
    kind: Literal["memory", "redis"] = "memory"
    #: Publications kept per channel for recovery, and for how many seconds.
    history_size: int = 1000
    history_ttl: float = 300.0
    #: The Redis engine: the server (any node of a Redis Cluster with `redis_cluster`) and
    #: the prefix of every key and pub/sub channel.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "livepush"
    redis_cluster: bool = False
    #: The memory engine: seconds an idle channel's epoch and offset outlive its history.
    memory_stream_ttl: float = 3600.0
    #: The memory engine: total bytes of stored execution outputs (oldest evicted).
    memory_output_bytes: int = 1024 * 1024 * 1024
    #: The memory engine's documents: their SQLite file (`:memory:`: this process only).
    sqlite_path: str = DEFAULT_PATH
    #: Limits and compaction of the stored CRDT documents (every engine).
    documents: StoreSettings = field(default_factory=StoreSettings)


def build_engine(settings: EngineSettings) -> Engine:
    """The engine `settings` name, with every part built and none started."""
    if settings.kind == "redis":
        return redis_engine(
            settings.redis_url,
            history_size=settings.history_size,
            history_ttl=settings.history_ttl,
            prefix=settings.redis_prefix,
            cluster=settings.redis_cluster,
            documents=settings.documents,
        )
    return memory_engine(
        history_size=settings.history_size,
        history_ttl=settings.history_ttl,
        stream_ttl=settings.memory_stream_ttl,
        output_bytes=settings.memory_output_bytes,
        sqlite_path=settings.sqlite_path,
        documents=settings.documents,
    )
