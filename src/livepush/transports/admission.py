"""Admission: whether a node takes a new connection at all, checked first on every handshake
(push and CRDT endpoints), before the token's signature costs anything.

- A per-node connection cap (`max_connections`, push and CRDT connections together): past it,
  503 `server_full` with a `Retry-After` of a few seconds, spread at random so the refused
  clients do not come back as one herd.
- A per-address handshake rate (`handshake_rate` per second, bursts of `handshake_burst`), a
  token bucket per client address: past it, 429 `too_many_handshakes` with a `Retry-After`.
  Behind a trusted proxy the address is the one the proxy reported (`requests.client_address`),
  so one office behind a NAT shares a bucket: the defaults leave room for that.

Buckets are kept for the `MAX_ADDRESSES` most recently seen addresses (an address that was
evicted starts with a full bucket, which an idle address would have anyway). Each refusal is
counted in `livepush_handshake_failures{code}` (by the endpoint, like every refusal) and
logged once per address until it is admitted again.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from livepush.core.ratelimit import TokenBucket
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.requests import client_address

log = logging.getLogger(__name__)

#: How many addresses' handshake buckets are kept.
MAX_ADDRESSES: Final = 100_000


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """The node's admission bounds (0 turns one off)."""

    max_connections: int = 100_000
    handshake_rate: float = 50.0
    handshake_burst: float = 200.0
    trust_proxy: bool = False


class Admission:
    """The connection cap and the per-address handshake rate of one node."""

    def __init__(self, settings: AdmissionSettings, open_connections: Callable[[], int]) -> None:
        self.settings = settings
        self._open_connections = open_connections
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        #: Addresses whose current refusals were logged already.
        self._told: set[str] = set()

    def check(self, request: web.Request) -> None:
        """Raise `server_full` or `too_many_handshakes` (with `retry_after`) unless this
        handshake may go on."""
        settings = self.settings
        if settings.max_connections and self._open_connections() >= settings.max_connections:
            self._refused(
                ErrorCode.SERVER_FULL,
                f"this server holds its limit of {settings.max_connections} connections; "
                "retry later (another node may have room)",
                random.uniform(1.0, 5.0),
                client_address(request, settings.trust_proxy),
            )
        if not settings.handshake_rate:
            return
        address = client_address(request, settings.trust_proxy)
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(
                settings.handshake_rate, settings.handshake_burst
            )
            if len(self._buckets) > MAX_ADDRESSES:
                evicted, _ = self._buckets.popitem(last=False)
                self._told.discard(evicted)
        else:
            self._buckets.move_to_end(address)
        if bucket.try_take(time.monotonic()):
            self._told.discard(address)
            return
        self._refused(
            ErrorCode.TOO_MANY_HANDSHAKES,
            f"more than {settings.handshake_rate:g} connection attempts per second from this "
            "address; retry later",
            1.0 / settings.handshake_rate,
            address,
        )

    def _refused(self, code: ErrorCode, message: str, retry_after: float, address: str) -> None:
        if address not in self._told:
            self._told.add(address)
            if len(self._told) > MAX_ADDRESSES:
                self._told.clear()
            log.warning("refused handshakes from %s: %s", address, code.value)
        raise ProtocolError(code, message, retry_after=retry_after)
