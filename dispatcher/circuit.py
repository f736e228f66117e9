"""The circuit breaker: an endpoint that keeps failing is left alone for a while.

After `failures` failed attempts in a row the circuit opens: for `cooldown` no attempt
goes to that endpoint, and its deliveries wait without spending their retry budget. Then
one probe is let through; success closes the circuit, failure opens it again for twice as
long, up to `max_cooldown`. A dead endpoint thus costs one attempt per cooldown instead of
a stream of them, and the work left for healthy endpoints is not slowed by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher.config import CircuitConfig

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(slots=True)
class Circuit:
    policy: CircuitConfig
    failures: int = 0  # failed attempts in a row
    open_until: datetime | None = None
    cooldown: float = 0.0

    def state(self, now: datetime) -> str:
        if self.open_until is None:
            return CLOSED
        return OPEN if now < self.open_until else HALF_OPEN

    def record(self, succeeded: bool, now: datetime) -> str | None:
        """Count an attempt's result; return the state entered, if this changed it."""
        if succeeded:
            was_open = self.open_until is not None
            self.failures, self.open_until, self.cooldown = 0, None, 0.0
            return CLOSED if was_open else None
        self.failures += 1
        if self.open_until is not None and now >= self.open_until:
            # The probe failed: stay away twice as long.
            return self._open(now, min(self.cooldown * 2, self.policy.max_cooldown))
        if self.open_until is None and 0 < self.policy.failures <= self.failures:
            return self._open(now, self.policy.cooldown)
        return None

    def _open(self, now: datetime, cooldown: float) -> str:
        self.cooldown = cooldown
        self.open_until = now + timedelta(seconds=cooldown)
        return OPEN
