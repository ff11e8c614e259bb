"""Token bucket for inbound messages."""

from __future__ import annotations

import time
from enum import Enum


class RateDecision(Enum):
    """What to do with one inbound message."""

    ALLOW = "allow"
    LIMITED = "limited"
    ABUSIVE = "abusive"


class TokenBucket:
    """`rate` messages per second with bursts of `burst`.

    Refused messages still cost a token, so the balance goes negative while a client keeps
    sending over its limit; once it owes more than a whole burst it is abusive and is cut.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = time.monotonic()

    def take(self, now: float | None = None) -> RateDecision:
        """Spend one token."""
        now = time.monotonic() if now is None else now
        elapsed = max(0.0, now - self._last)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._last = now
        self._tokens -= 1.0
        if self._tokens >= 0.0:
            return RateDecision.ALLOW
        if self._tokens < -self.burst:
            return RateDecision.ABUSIVE
        return RateDecision.LIMITED

    def try_take(self, now: float | None = None) -> bool:
        """Spend one token if there is one; a refusal costs nothing (for messages that are
        dropped, so a client always over the limit still gets `rate` through)."""
        now = time.monotonic() if now is None else now
        elapsed = max(0.0, now - self._last)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
