"""Operators' repairs: redelivering failed deliveries and pruning past retention."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiosqlite

from dispatcher import clock, database
from dispatcher.admin import UsageError, placeholders

# Events deleted per prune transaction: short enough that the daemon never waits long for
# the write lock, and under the 999 host parameters that old SQLite builds allow.
PRUNE_BATCH = 500

# --- redeliver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RedeliverScope:
    """Which failed deliveries to put back; every filter given must hold."""

    delivery_ids: tuple[int, ...] = ()
    event_id: str | None = None
    webhook: str | None = None
    since: datetime | None = None  # on the event's created_at, inclusive
    until: datetime | None = None  # exclusive


async def redeliver(
    conn: aiosqlite.Connection, scope: RedeliverScope, now: datetime, configured: Collection[str]
) -> int:
    """Put failed deliveries back to due now, each with a fresh retry budget and its attempt
    numbering going on; return how many.

    Only deliveries of `configured` webhooks are touched: the daemon would never attempt one
    whose webhook it no longer has, and it would stay pending for ever.
    """
    _check_scope(scope, configured)
    where, params = _redeliver_filter(scope)
    stamp = clock.iso(now)

    async def body(c: aiosqlite.Connection) -> int:
        await _require_targets(c, scope)
        cursor = await c.execute(
            "UPDATE deliveries SET state = 'pending', budget_from = attempts,"
            " next_attempt_at = ?, finished_at = NULL, updated_at = ?"
            f" WHERE state = 'failed' AND webhook IN ({placeholders(configured)}) AND {where}",
            [stamp, stamp, *configured, *params],
        )
        if cursor.rowcount:
            # A running daemon caches due times; the bump makes it read them again.
            await c.execute("UPDATE meta SET value = value + 1 WHERE key = 'deliveries'")
        return cursor.rowcount

    return await database.write(conn, body)


def _check_scope(scope: RedeliverScope, configured: Collection[str]) -> None:
    if not (scope.delivery_ids or scope.event_id is not None or scope.webhook is not None):
        raise UsageError("say which deliveries: --delivery ID, --event ID or --webhook NAME")
    if scope.webhook is not None and scope.webhook not in configured:
        valid = ", ".join(sorted(configured)) or "none"
        raise UsageError(f"--webhook: {scope.webhook!r} is not configured (valid: {valid})")
    if scope.since is not None and scope.until is not None and scope.since >= scope.until:
        raise UsageError(
            f"--since {clock.iso(scope.since)} is not before --until {clock.iso(scope.until)}"
        )


async def _require_targets(conn: aiosqlite.Connection, scope: RedeliverScope) -> None:
    """A delivery or event named on the command line that does not exist is a typo to report,
    not an empty selection."""
    if scope.delivery_ids:
        rows = await conn.execute_fetchall(
            f"SELECT id FROM deliveries WHERE id IN ({placeholders(scope.delivery_ids)})",
            scope.delivery_ids,
        )
        missing = sorted(set(scope.delivery_ids) - {row[0] for row in rows})
        if missing:
            raise UsageError(f"--delivery: no delivery with id {', '.join(map(str, missing))}")
    if scope.event_id is not None:
        rows = await conn.execute_fetchall("SELECT 1 FROM events WHERE id = ?", [scope.event_id])
        if not list(rows):
            raise UsageError(f"--event: no event with id {scope.event_id!r}")


def _redeliver_filter(scope: RedeliverScope) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if scope.delivery_ids:
        clauses.append(f"id IN ({placeholders(scope.delivery_ids)})")
        params.extend(scope.delivery_ids)
    if scope.event_id is not None:
        clauses.append("event_id = ?")
        params.append(scope.event_id)
    if scope.webhook is not None:
        clauses.append("webhook = ?")
        params.append(scope.webhook)
    created = "event_id IN (SELECT id FROM events WHERE created_at {op} ?)"
    if scope.since is not None:
        clauses.append(created.format(op=">="))
        params.append(clock.iso(scope.since))
    if scope.until is not None:
        clauses.append(created.format(op="<"))
        params.append(clock.iso(scope.until))
    return " AND ".join(clauses), params


# --- prune ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruned:
    events: int = 0
    deliveries: int = 0
    attempts: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            self.events + other.events,
            self.deliveries + other.deliveries,
            self.attempts + other.attempts,
        )


async def prune(conn: aiosqlite.Connection, older_than: float, now: datetime) -> Pruned:
    """Delete events created before the cutoff whose deliveries are all finished, with their
    deliveries and attempts. Queued events and unfinished deliveries are kept whatever their
    age. Batched so the write lock is never held for long."""
    cutoff = clock.iso(now - timedelta(seconds=older_than))
    total = Pruned()
    while True:
        batch = await database.write(conn, lambda c: _prune_batch(c, cutoff))
        total += batch
        if batch.events == 0:
            return total


async def _prune_batch(conn: aiosqlite.Connection, cutoff: str) -> Pruned:
    rows = await conn.execute_fetchall(
        "SELECT e.id FROM events AS e WHERE e.created_at < ? AND e.state != 'queued'"
        " AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.event_id = e.id"
        " AND d.state IN ('pending', 'in_flight')) ORDER BY e.seq LIMIT ?",
        [cutoff, PRUNE_BATCH],
    )
    ids = [row[0] for row in rows]
    if not ids:
        return Pruned()
    marks = placeholders(ids)
    n_deliveries = await database.scalar(
        conn, f"SELECT count(*) FROM deliveries WHERE event_id IN ({marks})", tuple(ids)
    )
    n_attempts = await database.scalar(
        conn,
        "SELECT count(*) FROM attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id"
        f" WHERE d.event_id IN ({marks})",
        tuple(ids),
    )
    # The foreign keys cascade: deleting the events deletes their deliveries and attempts.
    await conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
    return Pruned(len(ids), n_deliveries, n_attempts)
