"""The retry rule: a pure function from an attempt's result to the delivery's next state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher.config import RetryConfig

SUCCEEDED = "succeeded"
FAILED = "failed"
PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Decision:
    state: str  # succeeded | failed | pending
    next_attempt_at: datetime | None  # set only when pending


def backoff_delay(retry_number: int, policy: RetryConfig, jitter_draw: float) -> float:
    """Seconds to wait before retry `retry_number` (1 for the first retry).

    `jitter_draw` in [-1, 1] spreads the delay by up to ±`policy.jitter`, so that many
    deliveries failing together do not retry together. When the schedule is shorter than
    the retry budget its last delay repeats.
    """
    if retry_number < 1:
        raise ValueError(f"retry numbers start at 1, got {retry_number}")
    base = policy.backoff[min(retry_number, len(policy.backoff)) - 1]
    return base * (1.0 + policy.jitter * max(-1.0, min(1.0, jitter_draw)))


# The engine calls this with six positional arguments. They should become keyword-only,
# which has to wait until that call site names them.
def decide(  # noqa: PLR0917
    budget_used: int,
    succeeded: bool,
    retry_after: float | None,
    now: datetime,
    policy: RetryConfig,
    jitter_draw: float,
) -> Decision:
    """What follows an attempt that was attempt number `budget_used + 1` of the budget.

    A budget is the first attempt plus `policy.max_retries` retries. `retry_after` is the
    receiver's own request (Retry-After); the wait is at least that, at most
    `policy.max_retry_after`.
    """
    if succeeded:
        return Decision(SUCCEEDED, None)
    attempts_spent = budget_used + 1
    if attempts_spent > policy.max_retries:
        return Decision(FAILED, None)
    delay = backoff_delay(attempts_spent, policy, jitter_draw)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return Decision(PENDING, now + timedelta(seconds=delay))
