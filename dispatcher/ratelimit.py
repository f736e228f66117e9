"""Per-endpoint rate limit: at most `per_second` attempts a second, with bursts up to one
second's worth, for receivers that publish a limit (or fall over without one)."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimit:
    """A token bucket that hands out reservations: each caller learns how long to wait for
    its turn, so waiting callers are served in order without polling."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.burst = max(1.0, per_second)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def reserve(self) -> float:
        """Take one attempt's token; return the seconds to wait before making it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.per_second
