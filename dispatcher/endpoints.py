"""Per-endpoint gate: a bounded buffer of claimed deliveries and the workers that send them.

Each webhook gets `max_in_flight` long-lived worker coroutines, which is both its
concurrency limit and cheaper than a task per delivery; a global semaphore caps all
endpoints together. A slow or hanging endpoint only ever occupies its own workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from dispatcher.circuit import HALF_OPEN, OPEN, Circuit
from dispatcher.config import CircuitConfig, WebhookConfig
from dispatcher.ratelimit import RateLimit
from dispatcher.store import Claimed

# How many claimed deliveries wait in memory per worker: enough to keep workers busy
# between two claims, few enough that a lease never outlives its wait.
BUFFER_PER_WORKER = 4
MIN_BUFFER = 64


@dataclass(slots=True)
class Job:
    """A claimed delivery with the body it carries."""

    claimed: Claimed
    body: bytes
    type: str


Handler = Callable[["Endpoint", Job], Awaitable[None]]


class Endpoint:
    def __init__(
        self,
        webhook: WebhookConfig,
        circuit: CircuitConfig,
        handler: Handler,
        on_room: Callable[[], None],
    ) -> None:
        self.webhook = webhook
        self.circuit = Circuit(circuit)
        self.rate = RateLimit(webhook.rate_limit) if webhook.rate_limit > 0 else None
        self.name = webhook.name
        self.capacity = max(MIN_BUFFER, webhook.max_in_flight * BUFFER_PER_WORKER)
        self.due_at: datetime | None = None
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._handler = handler
        self._on_room = on_room
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[int] = set()  # delivery ids being attempted
        self._cut_off: list[int] = []
        self._closing = False

    @property
    def room(self) -> int:
        """How many more deliveries the buffer takes now."""
        return self.capacity - self._queue.qsize() - len(self._busy)

    @property
    def idle(self) -> bool:
        return self._queue.empty() and not self._busy

    def wants_claim(self, now: datetime) -> bool:
        if self._closing or self.due_at is None or self.due_at > now:
            return False
        state = self.circuit.state(now)
        if state == OPEN:
            return False
        if state == HALF_OPEN:
            return self.idle  # one probe at a time
        # Claim in batches rather than one by one as room frees up.
        return self.room >= self.claim_threshold or self.idle

    @property
    def claim_threshold(self) -> int:
        # Half the buffer: claims come in large batches, and the other half keeps the
        # workers busy meanwhile.
        return self.capacity // 2

    def claim_limit(self, now: datetime) -> int:
        return 1 if self.circuit.state(now) == HALF_OPEN else self.room

    def take_buffered(self) -> list[Job]:
        """Remove and return every claimed delivery not yet being attempted."""
        jobs: list[Job] = []
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None:
                jobs.append(job)
        return jobs

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"worker:{self.name}:{i}")
            for i in range(self.webhook.max_in_flight)
        ]

    def put(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._queue.put_nowait(job)

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            if job is None:
                return
            delivery_id = job.claimed.delivery_id
            self._busy.add(delivery_id)
            try:
                if self.rate is not None:
                    await asyncio.sleep(self.rate.reserve())
                await self._handler(self, job)
            except asyncio.CancelledError:
                self._cut_off.append(delivery_id)
                raise
            finally:
                self._busy.discard(delivery_id)
                # Wake the engine only when the buffer crosses the claim threshold, not
                # after every attempt: one claim then refills it in a single round trip.
                if self.room == self.claim_threshold or self.idle:
                    self._on_room()

    async def close(self, grace: float) -> tuple[list[int], list[int]]:
        """Stop taking work; let attempts under way finish for up to `grace` seconds.

        Returns the ids of deliveries never attempted (still buffered) and of those whose
        attempt was cut off, for the caller to hand back to the queue.
        """
        self._closing = True
        unsent = [job.claimed.delivery_id for job in self.take_buffered()]
        for _ in self._workers:
            self._queue.put_nowait(None)
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return unsent, self._cut_off
