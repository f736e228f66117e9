"""Operators' queries and commands: enqueue, the event log, attempts, status, redeliver,
prune. Everything the command line reads or changes in the database goes through here."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
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

# Events deleted per prune transaction: short enough that the daemon never waits long for
# the write lock, and under the 999 host parameters that old SQLite builds allow.
PRUNE_BATCH = 500


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


def _marks(values: Collection[object]) -> str:
    return ", ".join("?" * len(values))


# --- enqueue -------------------------------------------------------------------------------


async def enqueue(
    conn: aiosqlite.Connection,
    type_: str,
    store_id: str,
    data: str,
    *,
    event_id: str | None = None,
    max_payload_bytes: int | None = None,
) -> str:
    """Insert one event after the checks the daemon makes at fan-out; return its id."""
    check_event(type_, store_id, data, event_id, max_payload_bytes)
    columns, params = ["type", "store_id", "payload"], [type_, store_id, data]
    if event_id is not None:
        columns.append("id")
        params.append(event_id)

    async def body(c: aiosqlite.Connection) -> str:
        # Checked inside the write transaction, so no other writer can slip the id in between.
        if event_id is not None and await c.execute_fetchall(
            "SELECT 1 FROM events WHERE id = ?", [event_id]
        ):
            raise UsageError(f"--id: an event with id {event_id!r} exists already")
        rows = await c.execute_fetchall(
            f"INSERT INTO events ({', '.join(columns)}) VALUES ({_marks(params)}) RETURNING id",
            params,
        )
        return str(next(iter(rows))[0])

    return await database.write(conn, body)


def check_event(
    type_: str, store_id: str, data: str, event_id: str | None, max_payload_bytes: int | None
) -> None:
    """Raise UsageError for an event the daemon would reject, naming the flag at fault."""
    for flag, value in (("--type", type_), ("--store", store_id), ("--data", data)):
        _require_utf8(flag, value)
    if type_ not in events.EVENT_TYPES:
        valid = ", ".join(events.EVENT_TYPES)
        raise UsageError(f"--type: unknown event type {type_!r} (valid: {valid})")
    if not store_id.strip():
        raise UsageError(f"--store: empty store id {store_id!r} (valid: a non-blank store id)")
    if event_id is not None:
        _check_event_id(event_id)
    size = len(data.encode("utf-8"))
    if max_payload_bytes is not None and size > max_payload_bytes:
        raise UsageError(
            f"--data: payload is {size} bytes, over queue.max_payload_bytes ({max_payload_bytes})"
        )
    try:
        payload = events.parse_payload(data)
        # Serialising the envelope is the daemon's last check: it refuses what strict JSON
        # cannot carry, such as numbers out of range or lone surrogates.
        events.envelope("check", type_, "", store_id, payload)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"--data: not a valid JSON object ({exc})") from exc


def _require_utf8(flag: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"{flag}: not valid UTF-8 text ({exc.reason})") from exc


def _check_event_id(event_id: str) -> None:
    _require_utf8("--id", event_id)
    # The id travels in the webhook-id header and in the signed content `{id}.{ts}.{body}`:
    # blanks, control characters and full stops would break one or the other.
    if not event_id.strip() or not event_id.isprintable() or "." in event_id:
        valid = "non-blank printable text without '.'"
        raise UsageError(f"--id: unusable event id {event_id!r} (valid: {valid})")


# --- reading -------------------------------------------------------------------------------


async def webhook_names(conn: aiosqlite.Connection) -> set[str]:
    """Every webhook the database knows of: mirrored from a configuration, or with deliveries."""
    rows = await _rows(
        conn, "SELECT name FROM webhooks UNION SELECT DISTINCT webhook FROM deliveries"
    )
    return {row["name"] for row in rows}


async def event_log(
    conn: aiosqlite.Connection, webhook: str | None, status: str | None, limit: int
) -> list[Row]:
    """Deliveries, and queued or rejected events that have none yet; newest first, then by
    event id and webhook so that rows created in the same millisecond keep one order."""
    if status is not None and status not in DELIVERY_STATES + EVENT_STATES:
        valid = ", ".join(DELIVERY_STATES + EVENT_STATES)
        raise UsageError(f"--status: unknown status {status!r} (valid: {valid})")
    if limit < 1:
        raise UsageError(f"--limit: must be at least 1, got {limit}")
    parts: list[str] = []
    params: list[object] = []
    if status is None or status in DELIVERY_STATES:
        where, values = _filters(("webhook", webhook), ("state", status))
        parts.append(
            "SELECT created_at, event_id, type, store_id, webhook, state, attempts, last_error,"
            f" delivery_id FROM event_log {where}"
        )
        params += values
    if webhook is None and (status is None or status in EVENT_STATES):
        where, values = _filters(("state", status), ("state IN", EVENT_STATES))
        parts.append(
            "SELECT created_at, id AS event_id, type, store_id, NULL AS webhook, state,"
            f" 0 AS attempts, error AS last_error, NULL AS delivery_id FROM events {where}"
        )
        params += values
    if not parts:
        # Queued and rejected events have no delivery, so no webhook has any of them.
        return []
    order = " ORDER BY created_at DESC, event_id, webhook LIMIT ?"
    return await _rows(conn, " UNION ALL ".join(parts) + order, [*params, limit])


def _filters(*pairs: tuple[str, object]) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    for column, value in pairs:
        if value is None:
            continue
        if isinstance(value, tuple):
            clauses.append(f"{column} ({_marks(value)})")
            params.extend(value)
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


async def attempts(conn: aiosqlite.Connection, event_id: str) -> list[Row]:
    """Every attempt of one event, per webhook in attempt order; UsageError if no such event."""
    rows = await _rows(
        conn,
        "SELECT d.webhook, d.id AS delivery_id, a.number, a.started_at, a.status_code,"
        " a.error_kind, a.error, a.duration_ms, a.manual, a.response_excerpt"
        " FROM attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id"
        " WHERE d.event_id = ? ORDER BY d.webhook, a.number",
        [event_id],
    )
    if not rows and not await _rows(conn, "SELECT 1 FROM events WHERE id = ?", [event_id]):
        raise UsageError(f"no event with id {event_id!r}")
    return [{**row, "manual": bool(row["manual"])} for row in rows]


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
    webhooks = {h["name"]: _health(h["url"], bool(h["active"])) for h in hooks}
    totals = dict.fromkeys(DELIVERY_STATES, 0)
    for row in by_state:
        # A webhook removed from the configuration still has its old deliveries.
        entry = webhooks.setdefault(row["webhook"], _health(None, False))
        entry[row["state"]] = row["n"]
        totals[row["state"]] = totals.get(row["state"], 0) + row["n"]
    for row in recent:
        entry = webhooks.setdefault(row["webhook"], _health(None, False))
        entry["attempts_last_hour"] = row["attempts"]
        entry["success_rate_last_hour"] = round(row["succeeded"] / row["attempts"], 3)
        entry["last_attempt_at"] = row["last_attempt_at"]
    return {
        "queued_events": counts.get("queued", 0),
        "rejected_events": counts.get("rejected", 0),
        "deliveries": totals,
        "webhooks": dict(sorted(webhooks.items())),
    }


def _health(url: str | None, active: bool) -> Row:
    return {
        "url": url,
        "active": active,
        **dict.fromkeys(DELIVERY_STATES, 0),
        "attempts_last_hour": 0,
        "success_rate_last_hour": None,
        "last_attempt_at": None,
    }


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
            f" WHERE state = 'failed' AND webhook IN ({_marks(configured)}) AND {where}",
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
            f"SELECT id FROM deliveries WHERE id IN ({_marks(scope.delivery_ids)})",
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
        clauses.append(f"id IN ({_marks(scope.delivery_ids)})")
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
    marks = _marks(ids)
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


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, default=str)
