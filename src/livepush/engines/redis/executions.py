"""Execution state and large outputs in Redis, in the execution channel's slot: the state is
updated by the same script that publishes to the channel (`RedisStreams.publish`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from livepush.engines.base import ExecutionState, ExecutionStore
from livepush.engines.redis.client import to_text, ttl_ms
from livepush.engines.redis.streams import RedisStreams
from livepush.protocol.envelope import Publication, StreamPosition


class RedisExecutions(ExecutionStore):
    """Execution state in a hash and outputs in strings, in the execution channel's slot."""

    def __init__(self, streams: RedisStreams) -> None:
        self._streams = streams
        self._own = False

    @classmethod
    def connect(cls, url: str, **settings: Any) -> RedisExecutions:
        """A store with its own connection (for publishers outside a node)."""
        store = cls(RedisStreams(url, **settings))
        store._own = True
        return store

    async def start(self) -> None:
        """See `ExecutionStore.start`."""
        if self._own:
            await self._streams.start()

    async def close(self) -> None:
        """See `ExecutionStore.close`."""
        if self._own:
            await self._streams.close()

    async def publish(
        self,
        publication: Publication,
        execution_id: str,
        fields: Sequence[tuple[str, bytes]],
        delete: Sequence[str] = (),
        *,
        sequence: bool = False,
        retention: float,
    ) -> Publication:
        """See `ExecutionStore.publish`."""
        state = (execution_id, retention, delete, fields) if fields or delete else None
        return await self._streams.publish(publication, sequence=sequence, state=state)

    async def state(self, execution_id: str) -> ExecutionState | None:
        """See `ExecutionStore.state`."""
        streams = self._streams
        async with streams.call():
            raw = await streams.redis.hgetall(streams.keys.execution(execution_id))
        if not raw:
            return None
        fields = {to_text(k): bytes(v) for k, v in raw.items()}
        epoch, offset = fields.pop("e", b"").decode(), int(fields.pop("o", b"0"))
        return ExecutionState(fields, StreamPosition(epoch, offset))

    async def fields(self, execution_id: str, names: Sequence[str]) -> dict[str, bytes]:
        """See `ExecutionStore.fields`."""
        streams = self._streams
        async with streams.call():
            values = await streams.redis.hmget(streams.keys.execution(execution_id), list(names))
        return {n: bytes(v) for n, v in zip(names, values, strict=True) if v is not None}

    async def put_output(self, execution_id: str, name: str, data: bytes, ttl: float) -> None:
        """See `ExecutionStore.put_output`."""
        streams = self._streams
        async with streams.call():
            await streams.redis.set(streams.keys.output(execution_id, name), data, px=ttl_ms(ttl))

    async def output_size(self, execution_id: str, name: str) -> int | None:
        """See `ExecutionStore.output_size`."""
        streams = self._streams
        key = streams.keys.output(execution_id, name)
        async with streams.call():
            size, exists = await asyncio.gather(
                streams.redis.strlen(key), streams.redis.exists(key)
            )
        return int(size) if exists else None

    async def read_output(self, execution_id: str, name: str, start: int, end: int) -> bytes:
        """See `ExecutionStore.read_output`."""
        if end <= start:
            return b""
        streams = self._streams
        async with streams.call():
            data = await streams.redis.getrange(
                streams.keys.output(execution_id, name), start, end - 1
            )
        return bytes(data)
