"""Publish to livepush channels through Redis, without running a server.

For backends and workers that produce events but hold no client connection: n8n's queue mode,
where workers run executions while the editor is connected to a main instance. Publications
get their channel offset, go into the channel's history and reach every node's subscribers
exactly as if a node had published them (the same atomic Redis script; the Redis-level format
is in docs/protocol.md, for publishers in other languages).

    async with Publisher("redis://127.0.0.1:6379/0") as publisher:
        await publisher.publish("workflow:42", "workflowUpdated", {"id": "42"})
        await publisher.to_push_ref(push_ref, "executionStarted", {...})
        await publisher.to_users(["u1", "u2"], "workflowActivated", {...})

Use the same `prefix`, `history_size` and `history_ttl` as the servers (the defaults match).
Errors: invalid input raises `ProtocolError` (with the same codes as the HTTP API); Redis being
unreachable raises `EngineUnavailable` (nothing was published; retry).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from livepush.engines.redis import RedisStreams
from livepush.protocol.channels import SYSTEM, push_channel, user_channel
from livepush.protocol.envelope import Priority, Publication, new_publication

__all__ = ["Publisher"]


class Publisher:
    """Publishes through Redis to the channels of a livepush cluster."""

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "livepush",
        cluster: bool = False,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        max_publish_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._streams = RedisStreams(
            redis_url,
            history_size=history_size,
            history_ttl=history_ttl,
            prefix=prefix,
            cluster=cluster,
        )
        self._max_bytes = max_publish_bytes
        self._started = False

    async def start(self) -> None:
        """Connect to Redis (raises `EngineUnavailable` if it cannot)."""
        await self._streams.start()
        self._started = True

    async def close(self) -> None:
        """Disconnect."""
        await self._streams.close()
        self._started = False

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(
        self,
        channel: str,
        message_type: str,
        data: dict[str, Any] | bytes,
        *,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> Publication:
        """Publish one message to one channel; returns it with its offset and epoch (ephemeral
        messages have neither: they are relayed, not kept)."""
        if not self._started:
            await self.start()
        publication = new_publication(
            channel,
            message_type,
            data,
            priority=Priority.EPHEMERAL if ephemeral else Priority.RELIABLE,
            key=key,
            max_bytes=self._max_bytes,
        )
        return await self._streams.publish(publication)

    async def to_push_ref(
        self, push_ref: str, message_type: str, data: dict[str, Any] | bytes
    ) -> Publication:
        """To one browser tab (n8n's `sendToOne`)."""
        return await self.publish(push_channel(push_ref), message_type, data)

    async def to_users(
        self, user_ids: Iterable[str], message_type: str, data: dict[str, Any] | bytes
    ) -> list[Publication]:
        """To every tab of each user (n8n's `sendToUsers`)."""
        return [await self.publish(user_channel(u), message_type, data) for u in user_ids]

    async def broadcast(self, message_type: str, data: dict[str, Any] | bytes) -> Publication:
        """To every connection of the cluster (n8n's `broadcast`)."""
        return await self.publish(SYSTEM, message_type, data)
