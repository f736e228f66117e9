"""The engine's storage operations: fan-out, claiming due deliveries, recording attempts.

Every statement the engine runs repeatedly is here, batched so that one round trip to the
SQLite thread serves many deliveries. Operators' queries live in admin.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import aiosqlite

from dispatcher import clock, database
from dispatcher.config import WebhookConfig
from dispatcher.errors import StoreError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """A queue row as a producer wrote it. A column is `str` when it held valid UTF-8
    text and `bytes` otherwise (a BLOB, or broken text), so nothing is trusted."""

    seq: int
    id: str | bytes
    type: str | bytes
    store_id: str | bytes
    payload: str | bytes
    created_at: str | bytes


@dataclass(frozen=True, slots=True)
class FanOutPlan:
    """What to do with a batch of queued events: deliveries to create, rows to reject."""

    deliveries: list[tuple[str, str]]  # (event id, webhook name)
    dispatched: list[int]  # event seqs
    rejected: list[tuple[str, int]]  # (reason, event seq)


@dataclass(slots=True)
class Claimed:
    """A delivery claimed for one attempt; `number` is the attempt it is about to make."""

    delivery_id: int
    event_id: str
    webhook: str
    number: int
    budget_used: int  # attempts already spent from the current retry budget
    manual: bool  # the first attempt after a manual redelivery


@dataclass(frozen=True, slots=True)
class EventRow:
    id: str
    type: str
    store_id: str
    payload: str
    created_at: str


@dataclass(slots=True)
class Outcome:
    """One finished attempt and the delivery state it leads to."""

    delivery_id: int
    number: int
    manual: bool
    started_at: str
    duration_ms: float
    status_code: int | None
    error_kind: str | None
    error: str | None
    response_excerpt: str | None
    state: str  # succeeded | failed | pending
    next_attempt_at: str | None


CLAIM = """
UPDATE deliveries
SET state = 'in_flight', lease_owner = ?, lease_expires_at = ?, updated_at = ?
WHERE id IN (
    SELECT id FROM deliveries
    WHERE state = 'pending' AND webhook = ? AND next_attempt_at <= ?
    ORDER BY next_attempt_at
    LIMIT ?
)
RETURNING id, event_id, webhook, attempts, budget_from
"""

INSERT_ATTEMPT = """
INSERT OR IGNORE INTO attempts (delivery_id, number, started_at, duration_ms, status_code,
                                error_kind, error, response_excerpt, manual)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Fenced by the lease owner: a process that lost its lease cannot overwrite the state
# another one has since written.
UPDATE_DELIVERY = """
UPDATE deliveries
SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?, last_status_code = ?,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = ?, finished_at = ?
WHERE id = ? AND lease_owner = ?
"""

# Producers' columns are read as bytes with their storage class: TEXT that is not valid
# UTF-8 would otherwise make the sqlite3 module fail the whole batch, and the queue stall.
READ_QUEUE = """
SELECT seq, CAST(id AS BLOB), typeof(id), CAST(type AS BLOB), typeof(type),
       CAST(store_id AS BLOB), typeof(store_id), CAST(payload AS BLOB), typeof(payload),
       CAST(created_at AS BLOB), typeof(created_at)
FROM events WHERE state = 'queued' ORDER BY seq LIMIT ?
"""

INSERT_DELIVERY = """
INSERT OR IGNORE INTO deliveries (event_id, webhook, state, next_attempt_at, created_at,
                                  updated_at)
VALUES (?, ?, 'pending', ?, ?, ?)
"""


class Store:
    """The engine's view of the database. One instance per daemon process (`owner`)."""

    def __init__(self, conn: aiosqlite.Connection, owner: str, path: Path | None = None) -> None:
        self.conn = conn
        self.owner = owner
        self.path = path
        self._watched = (str(path), f"{path}-wal") if path is not None else ()
        # One connection serves every task: a statement issued while another task's
        # transaction is open would silently join (and roll back with) that transaction,
        # so writes take turns.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, owner: str) -> Store:
        return cls(await database.connect(path), owner, path)

    async def close(self) -> None:
        await self.conn.close()

    def disk_signature(self) -> tuple[int, ...] | None:
        """A fingerprint of the database files that changes with every commit.

        A stat costs about a microsecond and needs no round trip to the SQLite thread, so
        the engine can look for new events every few milliseconds while idle. Every commit
        in WAL mode writes the -wal file; the main file changes at checkpoints.
        """
        if not self._watched:
            return None
        parts: list[int] = []
        for name in self._watched:
            try:
                info = os.stat(name)
            except OSError:
                parts.extend((0, 0, 0))
                continue
            parts.extend((info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(parts)

    async def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap "anything new?" probe."""
        return await self._read_scalar("PRAGMA data_version")

    async def _read_scalar(self, sql: str, params: tuple[object, ...] = ()) -> int:
        try:
            return await database.scalar(self.conn, sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    async def _read(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        try:
            return list(await self.conn.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    async def _write_one(self, sql: str, params: Sequence[object]) -> list[sqlite3.Row]:
        """One statement in autocommit mode: a single round trip, retried while locked."""

        async def attempt() -> list[sqlite3.Row]:
            return list(await self.conn.execute_fetchall(sql, params))

        async with self._write_lock:
            return await database.while_locked(attempt)

    async def _write(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        async with self._write_lock:
            return await database.write(self.conn, body)

    async def sync_webhooks(self, webhooks: Sequence[WebhookConfig], now: datetime) -> None:
        """Mirror the configured webhooks (never their secrets) into the `webhooks` table."""
        stamp = clock.iso(now)
        rows = [
            (
                w.name,
                _without_query(w.url),
                json.dumps(sorted(w.events)),
                json.dumps(sorted(w.stores)),
                w.max_in_flight,
                round(w.timeout * 1000),
                int(bool(w.secrets)),
                stamp,
            )
            for w in webhooks
        ]

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.execute("UPDATE webhooks SET active = 0, updated_at = ?", (stamp,))
            await conn.executemany(
                "INSERT OR REPLACE INTO webhooks (name, url, events, stores, max_in_flight,"
                " timeout_ms, signed, active, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                rows,
            )

        await self._write(body)

    async def set_circuit(self, webhook: str, open_until: datetime | None) -> None:
        """Show operators whether the circuit breaker is keeping this endpoint alone."""
        until = clock.iso(open_until) if open_until is not None else None
        await self._write_one(
            "UPDATE webhooks SET circuit_open_until = ? WHERE name = ?", (until, webhook)
        )

    async def release_leases(self, now: datetime, *, every_owner: bool) -> int:
        """Return abandoned in-flight deliveries to due, spending no retry budget.

        With `every_owner` (at start, while holding the daemon lock) every lease is
        abandoned; otherwise only expired leases of other processes are.
        """
        stamp = clock.iso(now)
        params: tuple[str, ...] = ()
        if every_owner:
            where = "state = 'in_flight'"
        else:
            where = "state = 'in_flight' AND lease_expires_at < ? AND lease_owner != ?"
            params = (stamp, self.owner)
        rows = await self._write_one(
            "UPDATE deliveries SET state = 'pending', lease_owner = NULL,"
            " lease_expires_at = NULL, next_attempt_at = ?, updated_at = ?"
            f" WHERE {where} RETURNING id",
            (stamp, stamp, *params),
        )
        return len(rows)

    async def fan_out(
        self, limit: int, now: datetime, plan: Callable[[list[QueuedEvent]], FanOutPlan]
    ) -> tuple[list[QueuedEvent], FanOutPlan]:
        """Read up to `limit` queued events and apply `plan` to them in one transaction, so
        that a crash never leaves an event half fanned out."""
        stamp = clock.iso(now)

        async def body(conn: aiosqlite.Connection) -> tuple[list[QueuedEvent], FanOutPlan]:
            rows = await conn.execute_fetchall(READ_QUEUE, (limit,))
            events = [_queued(row) for row in rows]
            decided = plan(events)
            await conn.executemany(
                INSERT_DELIVERY, [(e, w, stamp, stamp, stamp) for e, w in decided.deliveries]
            )
            await conn.executemany(
                "UPDATE events SET state = 'dispatched' WHERE seq = ?",
                [(seq,) for seq in decided.dispatched],
            )
            await conn.executemany(
                "UPDATE events SET state = 'rejected', error = ? WHERE seq = ?", decided.rejected
            )
            return events, decided

        return await self._write(body)

    async def claim(
        self, webhook: str, now: datetime, limit: int, lease_until: datetime
    ) -> list[Claimed]:
        """Lease up to `limit` due deliveries of one webhook, oldest due first."""
        rows = await self._write_one(
            CLAIM,
            (self.owner, clock.iso(lease_until), clock.iso(now), webhook, clock.iso(now), limit),
        )
        return [
            Claimed(
                delivery_id=row[0],
                event_id=row[1],
                webhook=row[2],
                number=row[3] + 1,
                budget_used=row[3] - row[4],
                manual=row[4] > 0 and row[3] == row[4],
            )
            for row in rows
        ]

    async def next_due(self, webhook: str) -> datetime | None:
        """When this webhook's earliest pending delivery falls due, if it has any."""
        rows = await self._read(
            "SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending' AND webhook = ?",
            (webhook,),
        )
        value = rows[0][0] if rows else None
        return clock.parse_iso(value) if value else None

    async def deliveries_epoch(self) -> int:
        """Bumped by operators' commands that change deliveries behind the daemon's back."""
        return await self._read_scalar("SELECT value FROM meta WHERE key = 'deliveries'")

    async def unfinished_count(self, webhooks: Sequence[str]) -> int:
        """Deliveries of these webhooks not yet finished, retries scheduled for later
        included. Deliveries of webhooks no longer configured wait for them to return."""
        marks = ",".join("?" * len(webhooks))
        return await self._read_scalar(
            "SELECT count(*) FROM deliveries"
            f" WHERE state IN ('pending', 'in_flight') AND webhook IN ({marks})",
            tuple(webhooks),
        )

    async def events_by_id(self, ids: Iterable[str]) -> list[EventRow]:
        wanted = list(ids)
        found: list[EventRow] = []
        # SQLite caps host parameters per statement; 500 stays well below every build's cap.
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._read(
                f"SELECT id, type, store_id, payload, created_at FROM events WHERE id IN ({marks})",
                chunk,
            )
            found.extend(EventRow(*row) for row in rows)
        return found

    async def record(self, outcomes: Sequence[Outcome], now: datetime) -> None:
        """Write a batch of attempts and the delivery states they lead to, atomically."""
        stamp = clock.iso(now)
        attempt_rows = [
            (
                o.delivery_id,
                o.number,
                o.started_at,
                o.duration_ms,
                o.status_code,
                o.error_kind,
                o.error,
                o.response_excerpt,
                int(o.manual),
            )
            for o in outcomes
        ]
        delivery_rows = [
            (
                o.state,
                o.number,
                o.next_attempt_at,
                o.error,
                o.status_code,
                stamp,
                stamp if o.state in ("succeeded", "failed") else None,
                o.delivery_id,
                self.owner,
            )
            for o in outcomes
        ]

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.executemany(INSERT_ATTEMPT, attempt_rows)
            await conn.executemany(UPDATE_DELIVERY, delivery_rows)

        await self._write(body)

    async def release(
        self, delivery_ids: Sequence[int], now: datetime, due_at: datetime | None = None
    ) -> None:
        """Hand claimed but unattempted deliveries back, spending no retry budget: at
        shutdown keeping their due time, for an open circuit due at `due_at`."""
        stamp = clock.iso(now)
        due = clock.iso(due_at) if due_at is not None else None

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "UPDATE deliveries SET state = 'pending', lease_owner = NULL,"
                " lease_expires_at = NULL, updated_at = ?,"
                " next_attempt_at = coalesce(?, next_attempt_at)"
                " WHERE id = ? AND state = 'in_flight' AND lease_owner = ?",
                [(stamp, due, i, self.owner) for i in delivery_ids],
            )

        await self._write(body)


def _without_query(url: str) -> str:
    """The URL as shown to operators: a query string may carry a token, so it is elided."""
    parts = urlsplit(url)
    return parts._replace(query="…").geturl() if parts.query else url


def _queued(row: sqlite3.Row) -> QueuedEvent:
    values = [_as_text(row[i], row[i + 1]) for i in range(1, 11, 2)]
    return QueuedEvent(row[0], *values)


def _as_text(raw: object, storage: object) -> str | bytes:
    data = raw if isinstance(raw, bytes) else str(raw).encode()
    if storage == "blob":
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data
