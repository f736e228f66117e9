"""The loop: poll the queue → fan out → claim due deliveries → send → record."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from dispatcher import circuit, clock, fanout, retry
from dispatcher.config import Config, WebhookConfig
from dispatcher.endpoints import Endpoint, Job
from dispatcher.errors import StoreError
from dispatcher.recorder import Recorder
from dispatcher.sender import AttemptResult, Sender
from dispatcher.store import Claimed, FanOutPlan, Outcome, QueuedEvent, Store

log = structlog.get_logger(__name__)

SWEEP_INTERVAL = 30.0
# Waking a Python event loop costs ~0.25 ms of CPU here, so polling every 10 ms all day
# would burn 2-3% of a core. After a quiet spell the loop polls less often: the first
# event after it waits up to IDLE_POLL_INTERVAL, every later one only poll_interval.
IDLE_AFTER = 5.0
IDLE_POLL_INTERVAL = 0.1
FULL_CHECK_INTERVAL = 1.0
STEP_RETRY_DELAY = 1.0


@dataclass(slots=True)
class _Poll:
    """What the loop knows about the database between two passes."""

    data_version: int = -1
    deliveries_epoch: int = -1
    queue_maybe: bool = True
    last_sweep: float = 0.0
    last_notice: float = 0.0
    last_work: float = 0.0
    last_full_check: float = 0.0
    disk_signature: tuple[int, ...] | None = None


class Engine:
    def __init__(
        self,
        config: Config,
        store: Store,
        sender: Sender,
        *,
        now: Callable[[], datetime] = clock.now,
        jitter: Callable[[], float] = lambda: random.uniform(-1.0, 1.0),
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        self.config = config
        self.store = store
        self.sender = sender
        self.now = now
        self.jitter = jitter
        self.sweep_interval = sweep_interval
        self.heartbeat = 0.0  # loop time of the last completed pass, for the watchdog
        self.recorder = Recorder(store, now)
        self.endpoints = {
            w.name: Endpoint(w, config.circuit, self._attempt, self._wake) for w in config.webhooks
        }
        self._deferred: list[tuple[int, datetime]] = []  # (delivery id, due again at)
        self._circuit_changes: dict[str, datetime | None] = {}  # for the webhooks table
        # Endpoints' workers already bound concurrency; the global cap only needs a
        # semaphore when they could together exceed it.
        workers = sum(w.max_in_flight for w in config.webhooks)
        cap = config.http.max_in_flight
        self._global = asyncio.Semaphore(cap) if workers > cap else None
        self._waiter: asyncio.Future[None] | None = None
        self._poll = _Poll()
        self._bodies = fanout.Bodies()

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> None:
        """Deliver until `stop` is set (or, with `until_idle`, until nothing is left to do),
        then shut down gracefully."""
        await self._prepare()
        stop_watch = asyncio.create_task(self._wake_on(stop))
        try:
            while not stop.is_set():
                try:
                    await self._step()
                except StoreError as exc:
                    # A full disk or a broken file: keep what is in memory, try again
                    # shortly rather than exit and lose the in-flight attempts.
                    log.error("engine_step_failed", error=str(exc))
                    await asyncio.sleep(STEP_RETRY_DELAY)
                    continue
                self.heartbeat = asyncio.get_running_loop().time()
                if until_idle and await self._finished():
                    break
                await self._pause(stop)
        finally:
            stop_watch.cancel()
            await self._shutdown()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake()

    async def _prepare(self) -> None:
        now = self.now()
        await self.store.sync_webhooks(self.config.webhooks, now)
        released = await self.store.release_leases(now, every_owner=True)
        if released:
            log.warning("leases_recovered", deliveries=released)
        await self._refresh_due()
        self.recorder.start()
        for endpoint in self.endpoints.values():
            endpoint.start()
        loop_time = asyncio.get_running_loop().time()
        self._poll.last_sweep = loop_time

    async def _step(self) -> None:
        """One pass: notice changes, fan out new events, claim due work, sweep leases."""
        await self._notice_changes()
        if self._deferred:
            await self._flush_deferred()
        await self._flush_circuits()
        if self._poll.queue_maybe and self._starving():
            await self._fan_out()
        now = self.now()
        for endpoint in self.endpoints.values():
            if endpoint.wants_claim(now):
                await self._claim(endpoint)
        await self._maybe_sweep()

    async def _pause(self, stop: asyncio.Event) -> None:
        if stop.is_set() or (self._poll.queue_maybe and self._starving()):
            return
        loop_time = asyncio.get_running_loop().time()
        interval = self.config.queue.poll_interval
        if loop_time - self._poll.last_work > IDLE_AFTER:
            interval = max(interval, IDLE_POLL_INTERVAL)
        timeout = min(interval, self._seconds_to_next_due())
        # A bare future and a timer handle: this runs up to a hundred times a second when
        # idle, and a task per wait would cost more than everything else the loop does.
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(max(timeout, 0.0), _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _seconds_to_next_due(self) -> float:
        now = self.now()
        dues = [e.due_at for e in self.endpoints.values() if e.due_at is not None and e.room]
        if not dues:
            return IDLE_POLL_INTERVAL
        return max(0.0, (min(dues) - now).total_seconds())

    def _starving(self) -> bool:
        """Whether some endpoint has room but nothing due: then it is worth fanning out."""
        now = self.now()
        return (
            any(
                e.room > 0 and (e.due_at is None or e.due_at > now) for e in self.endpoints.values()
            )
            or not self.endpoints
        )

    async def _notice_changes(self) -> None:
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._poll.last_notice < self.config.queue.poll_interval:
            return
        self._poll.last_notice = loop_time
        signature = self.store.disk_signature()
        # The file fingerprint answers "nothing changed" without a database round trip;
        # the full check still runs every second in case a file system hides a change.
        unchanged = signature is not None and signature == self._poll.disk_signature
        if unchanged and loop_time - self._poll.last_full_check < FULL_CHECK_INTERVAL:
            return
        self._poll.disk_signature = signature
        self._poll.last_full_check = loop_time
        version = await self.store.data_version()
        if version == self._poll.data_version:
            return
        self._poll.data_version = version
        self._poll.queue_maybe = True
        epoch = await self.store.deliveries_epoch()
        if epoch != self._poll.deliveries_epoch:
            self._poll.deliveries_epoch = epoch
            await self._refresh_due()

    async def _refresh_due(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.due_at = await self.store.next_due(endpoint.name)

    async def _fan_out(self) -> None:
        limit = self.config.queue.batch_size
        queued, plan = await self.store.fan_out(limit, self.now(), self._plan)
        self._poll.queue_maybe = len(queued) >= limit
        if not queued:
            return
        self._poll.last_work = asyncio.get_running_loop().time()
        now = self.now()
        for _, webhook in plan.deliveries:
            endpoint = self.endpoints[webhook]
            if endpoint.due_at is None or endpoint.due_at > now:
                endpoint.due_at = now
        for reason, seq in plan.rejected:
            event = next(e for e in queued if e.seq == seq)
            log.warning("event_rejected", event_id=event.id, seq=seq, reason=reason)

    def _plan(self, queued: list[QueuedEvent]) -> FanOutPlan:
        webhooks = self.config.webhooks
        return fanout.plan(queued, webhooks, self.config.queue.max_payload_bytes, self._bodies)

    async def _claim(self, endpoint: Endpoint) -> None:
        now = self.now()
        # Long enough to cover the wait in the endpoint's buffer and the attempt itself.
        waves = endpoint.capacity / endpoint.webhook.max_in_flight + 2
        lease_seconds = waves * endpoint.webhook.timeout + 60
        lease = clock.later(now, lease_seconds)
        limit = endpoint.claim_limit(now)
        claimed = await self.store.claim(endpoint.name, now, limit, lease)
        if len(claimed) < limit:
            endpoint.due_at = await self.store.next_due(endpoint.name)
        if not claimed:
            return
        self._poll.last_work = asyncio.get_running_loop().time()
        endpoint.put(await self._jobs(claimed))

    async def _jobs(self, claimed: list[Claimed]) -> list[Job]:
        missing = self._bodies.missing([c.event_id for c in claimed])
        if missing:
            self._bodies.load(await self.store.events_by_id(missing))
        jobs = []
        for c in claimed:
            message = self._bodies.get(c.event_id)
            if message is None:
                self._unsendable(c)
                continue
            jobs.append(Job(c, message.body, message.type))
        return jobs

    def _unsendable(self, claimed: Claimed) -> None:
        """A claimed delivery whose event can no longer be read: fail it, with the reason,
        rather than leave it leased for ever."""
        log.error("event_unreadable", event_id=claimed.event_id, delivery=claimed.delivery_id)
        self.recorder.add(
            Outcome(
                delivery_id=claimed.delivery_id,
                number=claimed.number,
                manual=claimed.manual,
                started_at=clock.iso(self.now()),
                duration_ms=0.0,
                status_code=None,
                error_kind="invalid_event",
                error="the event row is missing or no longer valid",
                response_excerpt=None,
                state=retry.FAILED,
                next_attempt_at=None,
            )
        )

    async def _attempt(self, endpoint: Endpoint, job: Job) -> None:
        reopen = endpoint.circuit.open_until
        if reopen is not None and endpoint.circuit.state(self.now()) == circuit.OPEN:
            self._defer([job], reopen)
            return
        if self._global is None:
            result = await self.sender.send(endpoint.webhook, job.claimed.event_id, job.body)
        else:
            async with self._global:
                result = await self.sender.send(endpoint.webhook, job.claimed.event_id, job.body)
        outcome = self._outcome(job.claimed, result)
        if outcome.state == retry.PENDING and outcome.next_attempt_at is not None:
            due = clock.parse_iso(outcome.next_attempt_at)
            if endpoint.due_at is None or due < endpoint.due_at:
                endpoint.due_at = due
        self.recorder.add(outcome)
        _log_attempt(endpoint.webhook, job, result, outcome)
        change = endpoint.circuit.record(result.succeeded, self.now())
        if change == circuit.OPEN:
            self._circuit_opened(endpoint)
        elif change == circuit.CLOSED:
            log.info("circuit_closed", webhook=endpoint.name)
            self._circuit_changes[endpoint.name] = None

    def _circuit_opened(self, endpoint: Endpoint) -> None:
        until = endpoint.circuit.open_until
        if until is None:
            return
        log.warning(
            "circuit_opened",
            webhook=endpoint.name,
            failures_in_a_row=endpoint.circuit.failures,
            cooldown_s=endpoint.circuit.cooldown,
            until=clock.iso(until),
        )
        endpoint.due_at = until
        self._defer(endpoint.take_buffered(), until)
        self._circuit_changes[endpoint.name] = until

    def _defer(self, jobs: list[Job], until: datetime) -> None:
        """Hand deliveries of an endpoint whose circuit is open back to the queue, due when
        it half-opens; written by the loop's next pass."""
        self._deferred.extend((job.claimed.delivery_id, until) for job in jobs)
        self._wake()

    async def _flush_circuits(self) -> None:
        while self._circuit_changes:
            name, until = self._circuit_changes.popitem()
            await self.store.set_circuit(name, until)

    async def _flush_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        by_time: dict[datetime, list[int]] = {}
        for delivery_id, until in deferred:
            by_time.setdefault(until, []).append(delivery_id)
        for until, ids in by_time.items():
            await self.store.release(ids, self.now(), due_at=until)

    def _outcome(self, claimed: Claimed, result: AttemptResult) -> Outcome:
        decision = retry.decide(
            claimed.budget_used,
            result.succeeded,
            result.retry_after,
            self.now(),
            self.config.retry,
            self.jitter(),
        )
        next_at = decision.next_attempt_at
        return Outcome(
            delivery_id=claimed.delivery_id,
            number=claimed.number,
            manual=claimed.manual,
            started_at=clock.iso(result.started_at),
            duration_ms=result.duration_ms,
            status_code=result.status_code,
            error_kind=result.error_kind,
            error=result.error,
            response_excerpt=result.response_excerpt,
            state=decision.state,
            next_attempt_at=clock.iso(next_at) if next_at else None,
        )

    async def _maybe_sweep(self) -> None:
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._poll.last_sweep < self.sweep_interval:
            return
        self._poll.last_sweep = loop_time
        released = await self.store.release_leases(self.now(), every_owner=False)
        if released:
            log.warning("leases_recovered", deliveries=released)
            await self._refresh_due()

    async def _finished(self) -> bool:
        if self._poll.queue_maybe or self.recorder.pending or self._deferred:
            return False
        if not all(e.idle for e in self.endpoints.values()):
            return False
        return await self.store.unfinished_count(list(self.endpoints)) == 0

    async def _shutdown(self) -> None:
        grace = self.config.shutdown_grace
        closing = [e.close(grace) for e in self.endpoints.values()]
        handed_back: list[int] = []
        for unsent, cut_off in await asyncio.gather(*closing):
            handed_back.extend(unsent)
            handed_back.extend(cut_off)
        # Outcomes already received must reach the database even if this task is being
        # cancelled, so the final flush and the hand-back run shielded.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._final_writes(handed_back))

    async def _final_writes(self, handed_back: list[int]) -> None:
        await self.recorder.close()
        await self._flush_deferred()
        await self._flush_circuits()
        if handed_back:
            await self.store.release(handed_back, self.now())
        log.info("engine_stopped", handed_back=len(handed_back))


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _log_attempt(webhook: WebhookConfig, job: Job, result: AttemptResult, outcome: Outcome) -> None:
    claimed = job.claimed
    if result.succeeded:
        log.debug(
            "attempt_succeeded",
            webhook=webhook.name,
            event_id=claimed.event_id,
            attempt=claimed.number,
            duration_ms=result.duration_ms,
        )
        return
    failure = {
        "webhook": webhook.name,
        "event_id": claimed.event_id,
        "attempt": claimed.number,
        "status_code": result.status_code,
        "duration_ms": result.duration_ms,
        "error_kind": result.error_kind,
        "error": result.error,
    }
    if outcome.state == retry.FAILED:
        log.error("delivery_failed", **failure)
    else:
        log.warning("attempt_failed", next_attempt_at=outcome.next_attempt_at, **failure)
