"""For producers written in Python: enqueue an event with nothing but the standard library.

    from dispatcher.producer import enqueue
    event_id = enqueue("/var/lib/webhook-dispatcher/dispatcher.db",
                       "order.created", "store-1", {"order_id": 42})

The daemon must have created the database once (it does at start). Plain SQL works just as
well; this helper adds the checks the daemon would otherwise make when it rejects a row.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from dispatcher.events import EVENT_TYPES, check_event_id


def enqueue(
    database: str | Path,
    type_: str,
    store_id: str,
    data: dict[str, Any],
    *,
    event_id: str | None = None,
    connection: sqlite3.Connection | None = None,
) -> str:
    """Insert one event and return its id. Raises ValueError for an event the daemon would
    reject. Pass `connection` to enqueue inside the producer's own transaction."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r} (valid: {', '.join(EVENT_TYPES)})")
    if not store_id.strip():
        raise ValueError("store_id must not be empty")
    if event_id is not None:
        check_event_id(event_id)
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False)
    if connection is not None:
        return _insert(connection, type_, store_id, payload, event_id)
    with sqlite3.connect(database, timeout=10) as conn:
        return _insert(conn, type_, store_id, payload, event_id)


def _insert(
    conn: sqlite3.Connection, type_: str, store_id: str, payload: str, event_id: str | None
) -> str:
    if event_id is None:
        sql = "INSERT INTO events (type, store_id, payload) VALUES (?, ?, ?) RETURNING id"
        row = conn.execute(sql, (type_, store_id, payload)).fetchone()
    else:
        sql = "INSERT INTO events (id, type, store_id, payload) VALUES (?, ?, ?, ?) RETURNING id"
        row = conn.execute(sql, (event_id, type_, store_id, payload)).fetchone()
    return str(row[0])
