"""Per-channel authorization: every subscribe asks a policy.

The default `ClaimsPolicy` reads the token's grants. `HttpCallbackPolicy` asks the host
application (the system that knows who may see which workflow), caches answers for a while and
coalesces concurrent identical questions; it fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Protocol

import aiohttp

from livepush.auth.tokens import Identity
from livepush.protocol.channels import SYSTEM
from livepush.protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger(__name__)


class AuthorizationPolicy(Protocol):
    """Decides whether an identity may subscribe to a channel (`push:` is decided by the node)."""

    async def can_subscribe(self, identity: Identity, kind: str, ident: str) -> bool:
        """True when `identity` may receive the channel `kind:ident`."""
        ...

    async def can_write(self, identity: Identity, kind: str, ident: str) -> bool:
        """True when `identity` may also change `kind:ident` (take its write lock, edit its
        CRDT document)."""
        ...

    async def close(self) -> None:
        """Release resources (HTTP sessions)."""
        ...


class ClaimsPolicy:
    """Allows `system`, the user's own `user:` channel, and what the token's claims grant."""

    async def can_subscribe(self, identity: Identity, kind: str, ident: str) -> bool:
        """See `AuthorizationPolicy.can_subscribe`."""
        if kind == SYSTEM:
            return True
        if kind == "user" and ident == identity.user_id:
            return True
        return identity.grants.allows(kind, ident)

    async def can_write(self, identity: Identity, kind: str, ident: str) -> bool:
        """Granted by the token and not marked read-only by its `readOnly` claim."""
        return identity.grants.writes(kind, ident)

    async def close(self) -> None:
        """Nothing to release."""


class HttpCallbackPolicy:
    """Asks the host application over HTTP when the token's own claims do not grant a channel.

    Request: `POST <url>` with `{"userId", "channel", "access"}` (`access` is `read` or `write`;
    the API key as a bearer token when one is configured); a 200 reply `{"allow": true|false}`
    is cached for `cache_ttl` seconds.
    Any other reply or a timeout denies with `authorization_unavailable`.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_ttl: float = 30.0,
        timeout: float = 5.0,
        api_key: str | None = None,
        max_entries: int = 100_000,
    ) -> None:
        self._url = url
        self._cache_ttl = cache_ttl
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._max_entries = max_entries
        self._cache: OrderedDict[tuple[str, str, str], tuple[bool, float]] = OrderedDict()
        self._in_flight: dict[tuple[str, str, str], asyncio.Task[bool]] = {}
        self._claims = ClaimsPolicy()
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0

    async def can_subscribe(self, identity: Identity, kind: str, ident: str) -> bool:
        """Claims first; then the cache; then one HTTP call shared by concurrent askers."""
        if await self._claims.can_subscribe(identity, kind, ident):
            return True
        return await self._question((identity.user_id, f"{kind}:{ident}", "read"))

    async def can_write(self, identity: Identity, kind: str, ident: str) -> bool:
        """Claims first (unless they mark the channel read-only); then as `can_subscribe`."""
        if identity.grants.is_read_only(kind, ident):
            return False
        if await self._claims.can_write(identity, kind, ident):
            return True
        return await self._question((identity.user_id, f"{kind}:{ident}", "write"))

    async def _question(self, key: tuple[str, str, str]) -> bool:
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            self._cache.move_to_end(key)
            return cached[0]
        task = self._in_flight.get(key)
        if task is None:
            # One task per question, awaited behind a shield: a caller that is cancelled (its
            # client hung up) neither cancels the call nor strands the others waiting on it.
            task = asyncio.get_running_loop().create_task(self._ask_and_cache(key))
            self._in_flight[key] = task
        return await asyncio.shield(task)

    async def _ask_and_cache(self, key: tuple[str, str, str]) -> bool:
        try:
            allowed = await self._ask(*key)
        finally:
            del self._in_flight[key]
        self._cache[key] = (allowed, time.monotonic() + self._cache_ttl)
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return allowed

    async def _ask(self, user_id: str, channel: str, access: str) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        self.calls += 1
        try:
            async with self._session.post(
                self._url,
                json={"userId": user_id, "channel": channel, "access": access},
                headers=self._headers,
            ) as response:
                if response.status != 200:
                    raise ProtocolError(
                        ErrorCode.AUTHORIZATION_UNAVAILABLE,
                        f"authorization callback answered HTTP {response.status}",
                    )
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("authorization callback %s failed: %r", self._url, exc)
            raise ProtocolError(
                ErrorCode.AUTHORIZATION_UNAVAILABLE, "authorization callback unavailable"
            ) from exc
        return isinstance(body, dict) and body.get("allow") is True

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
