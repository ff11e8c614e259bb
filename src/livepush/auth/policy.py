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

    async def close(self) -> None:
        """Nothing to release."""


class HttpCallbackPolicy:
    """Asks the host application over HTTP when the token's own claims do not grant a channel.

    Request: `POST <url>` with `{"userId", "channel"}` (and the API key as a bearer token when
    one is configured); a 200 reply `{"allow": true|false}` is cached for `cache_ttl` seconds.
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
        self._cache: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()
        self._in_flight: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._claims = ClaimsPolicy()
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0

    async def can_subscribe(self, identity: Identity, kind: str, ident: str) -> bool:
        """Claims first; then the cache; then one HTTP call shared by concurrent askers."""
        if await self._claims.can_subscribe(identity, kind, ident):
            return True
        channel = f"{kind}:{ident}"
        key = (identity.user_id, channel)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(key)
            return cached[0]
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            allowed = await self._ask(identity.user_id, channel)
        except ProtocolError as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here so an unshared failure is not logged as lost
            raise
        finally:
            del self._in_flight[key]
        future.set_result(allowed)
        self._cache[key] = (allowed, now + self._cache_ttl)
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return allowed

    async def _ask(self, user_id: str, channel: str) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        self.calls += 1
        try:
            async with self._session.post(
                self._url, json={"userId": user_id, "channel": channel}, headers=self._headers
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
