"""Token bucket for inbound client messages, driven by explicit clock values."""

from __future__ import annotations

import time

from livepush.core.ratelimit import RateDecision, TokenBucket


def _bucket(rate: float, burst: float) -> tuple[TokenBucket, float]:
    bucket = TokenBucket(rate, burst)
    # The bucket starts full at construction time on the monotonic clock; explicit `now`
    # values continue from there.
    return bucket, time.monotonic()


def test_messages_within_burst_allowed() -> None:
    bucket, t0 = _bucket(rate=1.0, burst=5)
    assert [bucket.take(t0) for _ in range(5)] == [RateDecision.ALLOW] * 5


def test_message_past_burst_limited() -> None:
    bucket, t0 = _bucket(rate=1.0, burst=3)
    for _ in range(3):
        assert bucket.take(t0) is RateDecision.ALLOW
    assert bucket.take(t0) is RateDecision.LIMITED


def test_limited_messages_still_cost_tokens() -> None:
    bucket, t0 = _bucket(rate=10.0, burst=3)
    for _ in range(4):  # 3 allowed, 1 limited: balance is now -1
        bucket.take(t0)
    # One token of refill (0.1 s) only pays for this message: still limited (balance -1).
    assert bucket.take(t0 + 0.1) is RateDecision.LIMITED
    # Refill 0.4 s = 4 tokens brings the balance from -1 to +2: allowed again.
    assert bucket.take(t0 + 0.5) is RateDecision.ALLOW


def test_client_owing_more_than_a_burst_is_abusive() -> None:
    bucket, t0 = _bucket(rate=1.0, burst=3)
    decisions = [bucket.take(t0) for _ in range(8)]
    # 3 allowed (balance 0), then -1..-3 limited, then -4 < -burst: abusive.
    assert (
        decisions
        == [RateDecision.ALLOW] * 3 + [RateDecision.LIMITED] * 3 + [RateDecision.ABUSIVE] * 2
    )


def test_balance_exactly_minus_burst_is_still_only_limited() -> None:
    bucket, t0 = _bucket(rate=1.0, burst=2)
    decisions = [bucket.take(t0) for _ in range(4)]  # balance 1, 0, -1, -2
    assert decisions[-1] is RateDecision.LIMITED
    assert bucket.take(t0) is RateDecision.ABUSIVE  # -3


def test_tokens_refill_at_rate() -> None:
    bucket, t0 = _bucket(rate=2.0, burst=2)
    assert bucket.take(t0) is RateDecision.ALLOW
    assert bucket.take(t0) is RateDecision.ALLOW
    assert bucket.take(t0) is RateDecision.LIMITED  # balance -1
    # 1 s at 2/s refills 2 tokens: balance 1, one message allowed.
    assert bucket.take(t0 + 1.0) is RateDecision.ALLOW
    assert bucket.take(t0 + 1.0) is RateDecision.LIMITED


def test_refill_is_capped_at_burst() -> None:
    bucket, t0 = _bucket(rate=100.0, burst=3)
    bucket.take(t0)
    later = t0 + 3600.0  # an hour idle must not bank more than one burst
    decisions = [bucket.take(later) for _ in range(4)]
    assert decisions == [RateDecision.ALLOW] * 3 + [RateDecision.LIMITED]


def test_steady_rate_at_limit_is_always_allowed() -> None:
    bucket, t0 = _bucket(rate=10.0, burst=2)
    for i in range(1, 50):
        assert bucket.take(t0 + i * 0.1) is RateDecision.ALLOW


def test_abusive_client_recovers_after_paying_back() -> None:
    bucket, t0 = _bucket(rate=1.0, burst=2)
    for _ in range(6):
        bucket.take(t0)
    assert bucket.take(t0) is RateDecision.ABUSIVE  # balance -5
    assert bucket.take(t0 + 10.0) is RateDecision.ALLOW  # refilled to burst, then -1 -> 1


def test_take_without_now_uses_monotonic_clock() -> None:
    bucket = TokenBucket(1000.0, 2)
    assert bucket.take() is RateDecision.ALLOW


def test_try_take_refusals_cost_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    assert bucket.try_take(now=0.0) and bucket.try_take(now=0.0)
    assert not any(bucket.try_take(now=0.0) for _ in range(1000))
    # a client always over the limit still gets the rate through
    assert bucket.try_take(now=0.1)
    assert not bucket.try_take(now=0.1)
