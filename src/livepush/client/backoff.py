"""Reconnection delays: exponential backoff with full jitter.

The delay before the reconnection attempt that follows `attempt` consecutive failures (0 for
the first) is drawn uniformly from `[0, min(cap, base * 2**attempt)]` ("full jitter", as in
the AWS architecture blog's *Exponential Backoff And Jitter*): many clients cut off at once
spread their reconnections over the whole window instead of arriving in waves.
"""

from __future__ import annotations

import random


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """The upper bound of the delay after `attempt` consecutive failures (0-based)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # 2**attempt overflows a float long after it passed any sensible cap.
    exponent = min(attempt, 1023)
    return min(cap, base * 2.0**exponent)


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """A delay drawn uniformly from `[0, min(cap, base * 2**attempt)]`.

    `rng` makes the draw reproducible (tests pass a seeded `random.Random`); by default the
    module-level generator is used."""
    ceiling = backoff_ceiling(attempt, base, cap)
    uniform = rng.uniform if rng is not None else random.uniform
    return uniform(0.0, ceiling)


class Backoff:
    """Counts consecutive failures and draws the next delay."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        if base < 0 or cap < 0:
            raise ValueError("backoff base and cap must be >= 0")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        delay = full_jitter(self.attempt, self.base, self.cap, self._rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """A connection succeeded: start from the shortest window again."""
        self.attempt = 0
