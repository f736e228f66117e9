"""The storage layer: schema, migrations and the query plans of the engine's statements."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dispatcher import database, store

PARTIAL_INDEXES = ("USING INDEX events_queued",)

ENGINE_QUERIES = {
    "read the queue": (store.READ_QUEUE, (500,)),
    "claim due deliveries": (store.CLAIM, ("o", "t", "t", "w", "t", 10)),
    "next due time": (
        "SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending' AND webhook = ?",
        ("w",),
    ),
    "unfinished deliveries": (
        "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'in_flight')"
        " AND webhook IN (?, ?)",
        ("a", "b"),
    ),
    "expired leases": (
        "SELECT id FROM deliveries WHERE state = 'in_flight' AND lease_expires_at < ?"
        " AND lease_owner != ?",
        ("t", "o"),
    ),
    "record a delivery": (store.UPDATE_DELIVERY, ("s", 1, None, None, None, "t", None, 1, "o")),
    "events by id": ("SELECT payload FROM events WHERE id IN (?, ?)", ("a", "b")),
}


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "dispatcher.db"
    conn = await database.connect(path)
    await conn.close()
    return path


@pytest.mark.parametrize("name", sorted(ENGINE_QUERIES))
def test_no_engine_query_scans_a_whole_table(db: Path, name: str) -> None:
    """A backlog of a million rows must not be read on every poll: each statement the
    engine repeats is answered from an index."""
    sql, params = ENGINE_QUERIES[name]
    with sqlite3.connect(db) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    details = [row[3] for row in plan]
    # Scanning a partial index is fine: it only ever holds the rows not yet fanned out.
    scans = [d for d in details if d.startswith("SCAN") and not d.endswith(PARTIAL_INDEXES)]
    assert not scans, details


def test_the_plan_check_notices_a_full_scan(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM deliveries WHERE last_error = 'x'"
        ).fetchall()
    assert [row[3] for row in plan] == ["SCAN deliveries"]


def test_the_schema_is_the_migrations_applied_in_order(db: Path, tmp_path: Path) -> None:
    """A database migrated at start has exactly the objects the migration files create."""
    fresh = tmp_path / "by-hand.db"
    with sqlite3.connect(fresh) as conn:
        for name in database.MIGRATIONS:
            conn.executescript(database.migration_script(name))

    def objects(path: Path) -> list[tuple[str, str, str]]:
        with sqlite3.connect(path) as conn:
            return conn.execute(
                "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
            ).fetchall()

    assert objects(db) == objects(fresh)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(database.MIGRATIONS),)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_plain_sql_insert_is_a_complete_event(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO events (type, store_id, payload)"
            " VALUES ('order.created', 'store-1', '{\"order_id\": 42}')"
        )
        row = conn.execute("SELECT id, created_at, state, error FROM events").fetchone()
    event_id, created_at, state, error = row
    assert event_id.startswith("evt_")
    assert len(event_id) == 36
    assert created_at.endswith("Z")
    assert "T" in created_at
    assert (state, error) == ("queued", None)
