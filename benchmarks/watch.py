"""Watching the daemon's progress the way an operator would: plain SQL on its database."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from types import TracebackType

from benchmarks.processes import BenchError, Daemon
from dispatcher import clock

POLL_INTERVAL = 0.05


class Watch:
    """A read-only look at the database, one short read transaction per query, so the
    daemon's writes and WAL checkpoints are never held up by the harness."""

    def __init__(self, db: Path) -> None:
        self._conn = sqlite3.connect(db, isolation_level=None, timeout=10)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def succeeded(self, webhook: str | None = None) -> int:
        sql = "SELECT count(*) FROM deliveries WHERE state = 'succeeded'"
        if webhook is None:
            return int(self._conn.execute(sql).fetchone()[0])
        return int(self._conn.execute(sql + " AND webhook = ?", (webhook,)).fetchone()[0])

    def rows(self, table: str) -> int:
        return int(self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def wait_for_succeeded(
        self, target: int, daemon: Daemon, timeout: float, webhook: str | None = None
    ) -> None:
        """Poll every POLL_INTERVAL until `target` deliveries have succeeded."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_INTERVAL) + 1):
            if self.succeeded(webhook) >= target:
                return
            daemon.check_alive()
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
        raise BenchError(
            f"{self.succeeded(webhook)} of {target} deliveries succeeded after {timeout:g}s"
        )

    def wait_for_rows(self, table: str, daemon: Daemon, timeout: float) -> None:
        """Wait until `table` holds a row: how the harness sees the daemon has started."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_INTERVAL) + 1):
            if self.rows(table):
                return
            daemon.check_alive()
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
        raise BenchError(f"no row in {table} after {timeout:g}s")

    def nth_finished_at(self, nth: int, webhook: str | None = None) -> float:
        """When the `nth` succeeded delivery (1-based, by finish time) was recorded, as unix
        seconds: the daemon's own timestamp, finer than the harness's polling."""
        where = "state = 'succeeded'" + (" AND webhook = ?" if webhook else "")
        params: tuple[object, ...] = (webhook,) if webhook else ()
        row = self._conn.execute(
            f"SELECT finished_at FROM deliveries WHERE {where}"
            " ORDER BY finished_at LIMIT 1 OFFSET ?",
            (*params, nth - 1),
        ).fetchone()
        if row is None or row[0] is None:
            raise BenchError(f"fewer than {nth} deliveries have finished")
        return clock.parse_iso(row[0]).timestamp()
