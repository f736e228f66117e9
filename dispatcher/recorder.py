"""Batches attempt outcomes into few write transactions.

Workers hand outcomes over without waiting; one writer task stores whatever has gathered
since its last write, so under load each transaction carries many attempts and when idle
an outcome is written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import structlog

from dispatcher.errors import StoreError
from dispatcher.store import Outcome, Store

log = structlog.get_logger(__name__)

MAX_BATCH = 1000
RETRY_DELAY = 1.0
# Outcomes gather this long before a write: a transaction costs several round trips to
# the SQLite thread whether it stores one outcome or a hundred.
GATHER_DELAY = 0.005


class Recorder:
    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now
        self._buffer: list[Outcome] = []
        self._has_work = asyncio.Event()
        self._writing = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    @property
    def pending(self) -> int:
        """Outcomes received but not yet stored."""
        return len(self._buffer) + self._writing

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recorder")

    def add(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        self._has_work.set()

    async def _run(self) -> None:
        while True:
            await self._has_work.wait()
            if not self._closing and len(self._buffer) < MAX_BATCH:
                await asyncio.sleep(GATHER_DELAY)
            self._has_work.clear()
            while self._buffer:
                await self._write_batch()
            if self._closing:
                return

    async def _write_batch(self) -> None:
        batch = self._buffer[:MAX_BATCH]
        del self._buffer[:MAX_BATCH]
        self._writing = len(batch)
        try:
            await self._store_until_done(batch)
        finally:
            self._writing = 0
        self.written += len(batch)

    async def _store_until_done(self, batch: list[Outcome]) -> None:
        """Keep the batch until it is stored: an outcome the receiver gave is never dropped
        because the disk was briefly full or the database briefly unwritable."""
        while True:
            try:
                await self._store.record(batch, self._now())
                return
            except StoreError as exc:
                log.error("outcomes_not_recorded", outcomes=len(batch), error=str(exc))
            await asyncio.sleep(RETRY_DELAY)

    async def close(self) -> None:
        """Store every outcome received so far, then stop."""
        self._closing = True
        self._has_work.set()
        if self._task is not None:
            await self._task
