"""Presence in Redis: claims (pushRef ownership) and channel members, in keys with expiry, so a
node that dies leaves no ghosts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from livepush.engines.base import PresenceStore
from livepush.engines.redis.client import ScriptClient, load_script, to_text, ttl_ms

_encode = msgspec.json.encode


class RedisPresence(ScriptClient, PresenceStore):
    """Claims and channel presence in Redis keys with expiry."""

    SCRIPTS: ClassVar[dict[str, str]] = {
        "claim": load_script("claim.lua"),
        "release": load_script("release.lua"),
        "members": load_script("members.lua"),
    }

    async def claim(self, name: str, owner: str, ttl: float) -> bool:
        """See `PresenceStore.claim`."""
        async with self.call():
            result = await self._scripts["claim"](
                keys=[self.keys.claim(name)], args=[owner, ttl_ms(ttl)]
            )
        return int(result) == 1

    async def release(self, name: str, owner: str, ttl: float) -> None:
        """See `PresenceStore.release`."""
        async with self.call():
            await self._scripts["release"](
                keys=[self.keys.claim(name)], args=[owner, ttl_ms(ttl) if ttl > 0 else 0]
            )

    async def join(self, channel: str, client_id: str, info: dict[str, Any], ttl: float) -> None:
        """See `PresenceStore.join`."""
        async with self.call():
            await self._scripts["members"](
                keys=list(self.keys.presence(channel)),
                args=["join", client_id, _encode(info), ttl_ms(ttl)],
            )

    async def leave(self, channel: str, client_id: str) -> None:
        """See `PresenceStore.leave`."""
        async with self.call():
            await self._scripts["members"](
                keys=list(self.keys.presence(channel)), args=["leave", client_id]
            )

    async def join_many(
        self, entries: Sequence[tuple[str, str, dict[str, Any]]], ttl: float
    ) -> None:
        """Batched (see `_batch`)."""
        await self._batch(
            self._scripts["members"],
            [
                (list(self.keys.presence(c)), ["join", cid, _encode(info), ttl_ms(ttl)])
                for c, cid, info in entries
            ],
        )

    async def leave_many(self, entries: Sequence[tuple[str, str]]) -> None:
        """Batched (see `_batch`)."""
        await self._batch(
            self._scripts["members"],
            [(list(self.keys.presence(c)), ["leave", cid]) for c, cid in entries],
        )

    async def claim_many(self, claims: Sequence[tuple[str, str]], ttl: float) -> None:
        """Batched (see `_batch`)."""
        await self._batch(
            self._scripts["claim"],
            [([self.keys.claim(name)], [owner, ttl_ms(ttl)]) for name, owner in claims],
        )

    async def _batch(self, script: Any, calls: Sequence[tuple[list[str], list[Any]]]) -> None:
        """Run many calls of a script: one pipeline (one round trip) per 1,000 on a plain
        Redis; on a cluster (where redis-py does not pipeline scripts) concurrently, within
        the cluster's command limit."""
        if self.cluster:

            async def one(keys: list[str], args: list[Any]) -> None:
                async with self.call():
                    await script(keys=keys, args=args)

            await asyncio.gather(*(one(k, a) for k, a in calls))
            return
        for i in range(0, len(calls), 1000):
            async with self.call():
                pipe = self.redis.pipeline(transaction=False)
                for keys, args in calls[i : i + 1000]:
                    await script(keys=keys, args=args, client=pipe)
                await pipe.execute()

    async def members(self, channel: str) -> dict[str, dict[str, Any]]:
        """See `PresenceStore.members`."""
        async with self.call():
            flat = await self._scripts["members"](
                keys=list(self.keys.presence(channel)), args=["members"]
            )
        return {to_text(flat[i]): msgspec.json.decode(flat[i + 1]) for i in range(0, len(flat), 2)}
