"""Locks with fencing tokens in Redis: one hash per lock with expiry, granted by one script, so
two nodes asking at the same instant grant it once."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from livepush.engines.base import LockGrant, LockStore
from livepush.engines.redis.client import ScriptClient, load_script, to_text, ttl_ms


class RedisLocks(ScriptClient, LockStore):
    """Locks in Redis hashes with expiry, granted by one script (atomic across nodes)."""

    SCRIPTS: ClassVar[dict[str, str]] = {
        "lock": load_script("lock.lua"),
        "unlock": load_script("unlock.lua"),
    }

    async def acquire(
        self, name: str, holder: str, owner: str, ttl: float, *, takeover: bool = False
    ) -> tuple[bool, LockGrant]:
        """See `LockStore.acquire`."""
        async with self.call():
            granted, who, whose, token, remaining = await self._scripts["lock"](
                keys=list(self.keys.lock(name)),
                args=[holder, owner, ttl_ms(ttl), "1" if takeover else "0"],
            )
        grant = LockGrant(name, to_text(who), to_text(whose), int(token), int(remaining) / 1000)
        return int(granted) == 1, grant

    async def _run_unlock(self, name: str, holder: str, token: int, action: str) -> bool:
        async with self.call():
            done = await self._scripts["unlock"](
                keys=[self.keys.lock(name)[0]], args=[holder, str(token), action]
            )
        return int(done) == 1

    async def release(self, name: str, holder: str, token: int) -> bool:
        """See `LockStore.release`."""
        return await self._run_unlock(name, holder, token, "release")

    async def check(self, name: str, token: int) -> bool:
        """See `LockStore.check`."""
        return await self._run_unlock(name, "", token, "check")

    async def holder(self, name: str) -> LockGrant | None:
        """See `LockStore.holder`."""
        key = self.keys.lock(name)[0]
        async with self.call():
            fields, remaining = await asyncio.gather(
                self.redis.hmget(key, ["h", "o", "t"]), self.redis.pttl(key)
            )
        if fields[0] is None or int(remaining) < 0:
            return None
        return LockGrant(
            name, to_text(fields[0]), to_text(fields[1]), int(fields[2]), int(remaining) / 1000
        )
