"""Operators' queries and commands: enqueue, the event log, attempts, status, redeliver,
prune. Everything the command line reads or changes in the database goes through here."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
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


async def fetch_rows(
    conn: aiosqlite.Connection, sql: str, params: Sequence[object] = ()
) -> list[Row]:
    try:
        return [dict(row) for row in await conn.execute_fetchall(sql, params)]
    except sqlite3.Error as exc:
        raise StoreError(f"database query failed: {exc}") from exc


def placeholders(values: Collection[object]) -> str:
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
        names = ", ".join(columns)
        rows = await c.execute_fetchall(
            f"INSERT INTO events ({names}) VALUES ({placeholders(params)}) RETURNING id", params
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
        events.parse_payload(data)
        # Building the envelope is the daemon's last check: it refuses text that cannot be
        # UTF-8, such as lone surrogates.
        events.envelope("check", type_, "", store_id, data)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"--data: not a valid JSON object ({exc})") from exc


def _require_utf8(flag: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"{flag}: not valid UTF-8 text ({exc.reason})") from exc


def _check_event_id(event_id: str) -> None:
    _require_utf8("--id", event_id)
    # The daemon's own rule, so that enqueue never accepts an id the daemon then rejects.
    try:
        events.check_event_id(event_id)
    except ValueError as exc:
        raise UsageError(f"--id: {exc}") from exc


# --- reading -------------------------------------------------------------------------------


async def webhook_names(conn: aiosqlite.Connection) -> set[str]:
    """Every webhook the database knows of: mirrored from a configuration, or with deliveries."""
    rows = await fetch_rows(
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
    return await fetch_rows(conn, " UNION ALL ".join(parts) + order, [*params, limit])


def _filters(*pairs: tuple[str, object]) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    for column, value in pairs:
        if value is None:
            continue
        if isinstance(value, tuple):
            clauses.append(f"{column} ({placeholders(value)})")
            params.extend(value)
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


async def attempts(conn: aiosqlite.Connection, event_id: str) -> list[Row]:
    """Every attempt of one event, per webhook in attempt order; UsageError if no such event."""
    rows = await fetch_rows(
        conn,
        "SELECT d.webhook, d.id AS delivery_id, a.number, a.started_at, a.status_code,"
        " a.error_kind, a.error, a.duration_ms, a.manual, a.response_excerpt"
        " FROM attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id"
        " WHERE d.event_id = ? ORDER BY d.webhook, a.number",
        [event_id],
    )
    if not rows and not await fetch_rows(conn, "SELECT 1 FROM events WHERE id = ?", [event_id]):
        raise UsageError(f"no event with id {event_id!r}")
    return [{**row, "manual": bool(row["manual"])} for row in rows]


async def status(conn: aiosqlite.Connection, now: datetime) -> Row:
    """Queue depth, deliveries by state, and each webhook's health over the last hour."""
    queue = await fetch_rows(
        conn, "SELECT state, count(*) AS n FROM events WHERE state != 'dispatched' GROUP BY state"
    )
    by_state = await fetch_rows(
        conn, "SELECT webhook, state, count(*) AS n FROM deliveries GROUP BY webhook, state"
    )
    since = clock.iso(now - timedelta(hours=1))
    recent = await fetch_rows(
        conn,
        "SELECT d.webhook, count(*) AS attempts,"
        " sum(a.error_kind IS NULL) AS succeeded, max(a.started_at) AS last_attempt_at"
        " FROM attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id"
        " WHERE a.started_at >= ? GROUP BY d.webhook",
        [since],
    )
    hooks = await fetch_rows(
        conn, "SELECT name, url, active, circuit_open_until FROM webhooks ORDER BY name"
    )
    return _status_report(queue, by_state, recent, hooks)


def _status_report(
    queue: list[Row], by_state: list[Row], recent: list[Row], hooks: list[Row]
) -> Row:
    counts = {row["state"]: row["n"] for row in queue}
    webhooks = {h["name"]: _health(h["url"], bool(h["active"])) for h in hooks}
    for h in hooks:
        webhooks[h["name"]]["circuit_open_until"] = h["circuit_open_until"]
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
        "circuit_open_until": None,
    }


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, default=str)
