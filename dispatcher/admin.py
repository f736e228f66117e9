"""Operators' queries and commands: enqueue, the event log, attempts, status, redeliver,
prune. Everything the command line reads or changes in the database goes through here."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from dispatcher import clock, database, events
from dispatcher.errors import DispatcherError, StoreError

Row = dict[str, Any]

DELIVERY_STATES = ("pending", "in_flight", "succeeded", "failed")
EVENT_STATES = ("queued", "rejected")


class UsageError(DispatcherError):
    """A command was given arguments it cannot act on."""


async def open_db(path: Path) -> aiosqlite.Connection:
    conn = await database.connect(path)
    conn.row_factory = sqlite3.Row
    return conn


async def _rows(conn: aiosqlite.Connection, sql: str, params: Sequence[object] = ()) -> list[Row]:
    try:
        return [dict(row) for row in await conn.execute_fetchall(sql, params)]
    except sqlite3.Error as exc:
        raise StoreError(f"database query failed: {exc}") from exc


async def enqueue(
    conn: aiosqlite.Connection, type_: str, store_id: str, data: str, event_id: str | None = None
) -> str:
    """Insert one event after the checks the daemon would make; return its id."""
    if type_ not in events.EVENT_TYPES:
        valid = ", ".join(events.EVENT_TYPES)
        raise UsageError(f"--type: unknown event type {type_!r} (valid: {valid})")
    if not store_id.strip():
        raise UsageError("--store: must not be empty")
    try:
        events.parse_payload(data)
    except ValueError as exc:
        raise UsageError(f"--data: not a JSON object ({exc})") from exc
    if event_id is not None and (not event_id or "." in event_id):
        raise UsageError(f"--id: {event_id!r} must be non-empty and contain no '.'")
    columns, params = "type, store_id, payload", [type_, store_id, data]
    if event_id is not None:
        columns, params = columns + ", id", [*params, event_id]
    marks = ", ".join("?" * len(params))
    try:
        rows = await conn.execute_fetchall(
            f"INSERT INTO events ({columns}) VALUES ({marks}) RETURNING id", params
        )
    except sqlite3.IntegrityError as exc:
        raise UsageError(f"--id: an event with id {event_id!r} exists already") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"cannot enqueue: {exc}") from exc
    return str(list(rows)[0][0])


async def event_log(
    conn: aiosqlite.Connection, webhook: str | None, status: str | None, limit: int
) -> list[Row]:
    """The newest deliveries first, with queued and rejected events that have none."""
    if status is not None and status not in DELIVERY_STATES + EVENT_STATES:
        valid = ", ".join(DELIVERY_STATES + EVENT_STATES)
        raise UsageError(f"--status: unknown status {status!r} (valid: {valid})")
    parts, params = [], []
    if status is None or status in DELIVERY_STATES:
        where = _filters(("webhook", webhook), ("state", status))
        parts.append(
            "SELECT created_at, event_id, type, store_id, webhook, state, attempts, last_error"
            f" FROM event_log {where[0]}"
        )
        params += where[1]
    if webhook is None and (status is None or status in EVENT_STATES):
        where = _filters(("state", status), ("state IN", EVENT_STATES))
        parts.append(
            "SELECT created_at, id, type, store_id, NULL, state, 0, error FROM events"
            f" {where[0]}"
        )
        params += where[1]
    sql = " UNION ALL ".join(parts) + " ORDER BY created_at DESC LIMIT ?"
    return await _rows(conn, sql, [*params, limit])


def _filters(*pairs: tuple[str, object]) -> tuple[str, list[object]]:
    clauses, params = [], []
    for column, value in pairs:
        if value is None:
            continue
        if isinstance(value, tuple):
            clauses.append(f"{column} ({', '.join('?' * len(value))})")
            params.extend(value)
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


async def attempts(conn: aiosqlite.Connection, event_id: str) -> list[Row]:
    rows = await _rows(
        conn,
        "SELECT d.webhook, a.number, a.started_at, a.status_code, a.error_kind, a.error,"
        " a.duration_ms, a.manual, a.response_excerpt"
        " FROM attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id"
        " WHERE d.event_id = ? ORDER BY d.webhook, a.number",
        [event_id],
    )
    if not rows and not await _rows(conn, "SELECT 1 FROM events WHERE id = ?", [event_id]):
        raise UsageError(f"no event with id {event_id!r}")
    return rows


async def status(conn: aiosqlite.Connection, now: datetime) -> Row:
    """Queue depth, deliveries by state, and each webhook's health over the last hour."""
    queue = await _rows(
        conn, "SELECT state, count(*) AS n FROM events WHERE state != 'dispatched' GROUP BY state"
    )
    by_state = await _rows(
        conn, "SELECT webhook, state, count(*) AS n FROM deliveries GROUP BY webhook, state"
    )
    since = clock.iso(now - timedelta(hours=1))
    recent = await _rows(
        conn,
        "SELECT d.webhook, count(*) AS attempts,"
        " sum(a.error_kind IS NULL) AS succeeded, max(a.started_at) AS last_attempt_at"
        " FROM attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id"
        " WHERE a.started_at >= ? GROUP BY d.webhook",
        [since],
    )
    hooks = await _rows(conn, "SELECT name, url, active FROM webhooks ORDER BY name")
    return _status_report(queue, by_state, recent, hooks)


def _status_report(
    queue: list[Row], by_state: list[Row], recent: list[Row], hooks: list[Row]
) -> Row:
    counts = {row["state"]: row["n"] for row in queue}
    webhooks: dict[str, Row] = {
        h["name"]: {"url": h["url"], "active": bool(h["active"]), **dict.fromkeys(DELIVERY_STATES, 0)}
        for h in hooks
    }
    totals = dict.fromkeys(DELIVERY_STATES, 0)
    for row in by_state:
        entry = webhooks.setdefault(row["webhook"], {"url": None, "active": False})
        entry[row["state"]] = row["n"]
        totals[row["state"]] = totals.get(row["state"], 0) + row["n"]
    for row in recent:
        entry = webhooks.setdefault(row["webhook"], {"url": None, "active": False})
        entry["attempts_last_hour"] = row["attempts"]
        entry["success_rate_last_hour"] = round(row["succeeded"] / row["attempts"], 3)
        entry["last_attempt_at"] = row["last_attempt_at"]
    return {
        "queued_events": counts.get("queued", 0),
        "rejected_events": counts.get("rejected", 0),
        "deliveries": totals,
        "webhooks": webhooks,
    }


@dataclass(frozen=True)
class RedeliverScope:
    delivery_ids: tuple[int, ...] = ()
    event_id: str | None = None
    webhook: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def redeliver(conn: aiosqlite.Connection, scope: RedeliverScope, now: datetime) -> int:
    """Put failed deliveries back to due with a fresh retry budget; return how many."""
    where, params = _redeliver_filter(scope)
    stamp = clock.iso(now)

    async def body(c: aiosqlite.Connection) -> int:
        cursor = await c.execute(
            "UPDATE deliveries SET state = 'pending', budget_from = attempts,"
            " next_attempt_at = ?, finished_at = NULL, updated_at = ?"
            f" WHERE state = 'failed' AND {where}",
            [stamp, stamp, *params],
        )
        await c.execute("UPDATE meta SET value = value + 1 WHERE key = 'deliveries'")
        return cursor.rowcount

    return await database.write(conn, body)


def _redeliver_filter(scope: RedeliverScope) -> tuple[str, list[object]]:
    if scope.delivery_ids:
        return f"id IN ({', '.join('?' * len(scope.delivery_ids))})", list(scope.delivery_ids)
    if scope.event_id is not None:
        return "event_id = ?", [scope.event_id]
    if scope.webhook is None:
        raise UsageError("name deliveries (--delivery), an event (--event) or --webhook")
    clauses, params = ["webhook = ?"], [scope.webhook]
    join = "event_id IN (SELECT id FROM events WHERE created_at {op} ?)"
    if scope.since is not None:
        clauses.append(join.format(op=">="))
        params.append(clock.iso(scope.since))
    if scope.until is not None:
        clauses.append(join.format(op="<"))
        params.append(clock.iso(scope.until))
    return " AND ".join(clauses), params


async def prune(conn: aiosqlite.Connection, older_than: float, now: datetime) -> int:
    """Delete events older than the cutoff whose deliveries are all finished, with their
    deliveries and attempts. Batched so the write lock is never held for long."""
    cutoff = clock.iso(now - timedelta(seconds=older_than))
    removed = 0
    while True:

        async def body(c: aiosqlite.Connection) -> int:
            cursor = await c.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events AS e"
                " WHERE e.created_at < ? AND e.state != 'queued' AND NOT EXISTS ("
                " SELECT 1 FROM deliveries AS d WHERE d.event_id = e.id"
                " AND d.state IN ('pending', 'in_flight')) LIMIT 1000)",
                [cutoff],
            )
            return cursor.rowcount

        batch = await database.write(conn, body)
        removed += batch
        if batch == 0:
            return removed


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, default=str)
