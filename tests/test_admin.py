"""dispatcher.admin: redelivery with a fresh retry budget, the event log's order, and enqueue's
checks, against a real database and the real engine."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher import admin, clock, maintenance
from dispatcher.admin import UsageError
from dispatcher.events import EVENT_TYPES
from dispatcher.maintenance import RedeliverScope
from tests.conftest import Behaviour, Receiver, insert_event, query, webhook, write_config
from tests.helpers import drain, prepare, running, wait_until


@contextlib.asynccontextmanager
async def admin_conn(db: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await admin.open_db(db)
    try:
        yield conn
    finally:
        await conn.close()


async def redeliver(db: Path, scope: RedeliverScope, configured: list[str]) -> int:
    async with admin_conn(db) as conn:
        return await maintenance.redeliver(conn, scope, clock.now(), configured)


def answering(*statuses: int) -> Behaviour:
    """A receiver behaviour answering `statuses` in turn, then 200 for ever."""
    script: Iterator[int] = iter(statuses)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=next(script, 200))

    return handler


async def always_500(request: web.Request) -> web.Response:
    return web.Response(status=500, text="down")


def insert_at(db: Path, created_at: str, event_id: str) -> str:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO events (id, type, store_id, payload, created_at)"
            " VALUES (?, 'order.created', 'store-1', '{}', ?)",
            (event_id, created_at),
        )
    return event_id


def states(db: Path) -> list[tuple[str, str, str]]:
    return query(db, "SELECT event_id, webhook, state FROM deliveries ORDER BY event_id, webhook")


# --- redeliver -----------------------------------------------------------------------------


async def test_redelivery_by_id_grants_a_fresh_budget_and_numbers_attempts_after_the_old(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.on("/f", answering(500, 500, 500, 500, 503, 503, 503))
    config = await prepare(write_config(tmp_path, [webhook("f", receiver.url("/f"))]))
    event_id = insert_event(config.database)
    await drain(config)
    rows = query(config.database, "SELECT id, state, attempts FROM deliveries")
    ((delivery_id, state, count),) = rows
    assert (state, count) == ("failed", 4)

    assert await redeliver(config.database, RedeliverScope(delivery_ids=(delivery_id,)), ["f"]) == 1
    await drain(config)

    rows = query(config.database, "SELECT number, status_code, manual FROM attempts ORDER BY id")
    assert rows == [
        (1, 500, 0), (2, 500, 0), (3, 500, 0), (4, 500, 0),
        (5, 503, 1), (6, 503, 0), (7, 503, 0), (8, 200, 0),
    ]  # fmt: skip
    assert query(config.database, "SELECT state, attempts FROM deliveries") == [("succeeded", 8)]
    assert [c.headers["webhook-id"] for c in receiver.received] == [event_id] * 8


async def test_a_redelivery_that_keeps_failing_stops_after_exactly_one_more_budget(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.on("/down", always_500)
    hooks = [webhook("d", receiver.url("/down"))]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 1}))
    event_id = insert_event(config.database)
    await drain(config)
    assert await redeliver(config.database, RedeliverScope(event_id=event_id), ["d"]) == 1
    await drain(config)
    assert query(config.database, "SELECT state, attempts FROM deliveries") == [("failed", 4)]
    manual = query(config.database, "SELECT number FROM attempts WHERE manual = 1")
    assert manual == [(3,)]


async def test_redelivery_by_webhook_takes_only_events_created_in_the_time_range(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.on("/down", always_500)
    hooks = [webhook("a", receiver.url("/down")), webhook("b", receiver.url("/down"))]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 0}))
    db = config.database
    for day in (1, 2, 3):
        insert_at(db, f"2026-01-0{day}T12:00:00.000Z", f"evt_day{day}")
    await drain(config)

    since = datetime(2026, 1, 2, tzinfo=UTC)
    until = datetime(2026, 1, 3, 12, tzinfo=UTC)  # exclusive: day 3 at noon stays out
    scope = RedeliverScope(webhook="a", since=since, until=until)
    assert await redeliver(db, scope, ["a", "b"]) == 1
    assert [row for row in states(db) if row[2] != "failed"] == [("evt_day2", "a", "pending")]

    assert await redeliver(db, RedeliverScope(webhook="a", since=since), ["a", "b"]) == 1
    pending = [row[:2] for row in states(db) if row[2] == "pending"]
    assert pending == [("evt_day2", "a"), ("evt_day3", "a")]


async def test_redelivery_by_event_takes_its_failed_deliveries_only(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.on("/down", always_500)
    hooks = [
        webhook("a", receiver.url("/down")),
        webhook("b", receiver.url("/down")),
        webhook("ok", receiver.url("/ok")),
    ]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 0}))
    db = config.database
    first, second = insert_at(db, "2026-01-01", "evt_1"), insert_at(db, "2026-01-02", "evt_2")
    await drain(config)

    assert await redeliver(db, RedeliverScope(event_id=first), ["a", "b", "ok"]) == 2
    assert states(db) == [
        (first, "a", "pending"), (first, "b", "pending"), (first, "ok", "succeeded"),
        (second, "a", "failed"), (second, "b", "failed"), (second, "ok", "succeeded"),
    ]  # fmt: skip


async def test_redelivery_skips_webhooks_that_are_no_longer_configured(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.on("/down", always_500)
    hooks = [webhook("kept", receiver.url("/down")), webhook("gone", receiver.url("/down"))]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 0}))
    event_id = insert_event(config.database)
    await drain(config)
    assert await redeliver(config.database, RedeliverScope(event_id=event_id), ["kept"]) == 1
    assert [row[1:] for row in states(config.database)] == [
        ("gone", "failed"),
        ("kept", "pending"),
    ]


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (RedeliverScope(), "say which deliveries"),
        (RedeliverScope(delivery_ids=(41, 42)), "no delivery with id 41, 42"),
        (RedeliverScope(event_id="evt_nope"), "no event with id 'evt_nope'"),
        (RedeliverScope(webhook="nobody"), "'nobody' is not configured (valid: a)"),
    ],
)
async def test_redelivery_names_what_it_cannot_find(
    tmp_path: Path, scope: RedeliverScope, message: str
) -> None:
    config = await prepare(write_config(tmp_path, [webhook("a", "http://127.0.0.1:1/")]))
    with pytest.raises(UsageError, match=re.escape(message)):
        await redeliver(config.database, scope, ["a"])
    assert query(config.database, "SELECT value FROM meta") == [(0,)]


async def test_a_redelivery_while_the_daemon_runs_is_noticed_and_attempted(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.on("/f", answering(500))
    hooks = [webhook("f", receiver.url("/f"))]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 0}))
    db = config.database
    async with running(config):
        event_id = insert_event(db)
        await wait_until(lambda: [row[2] for row in states(db)] == ["failed"])
        assert await redeliver(db, RedeliverScope(event_id=event_id), ["f"]) == 1
        await wait_until(lambda: [row[2] for row in states(db)] == ["succeeded"])
    rows = query(db, "SELECT number, status_code, manual FROM attempts ORDER BY number")
    assert rows == [(1, 500, 0), (2, 200, 1)]


# --- the event log -------------------------------------------------------------------------


async def test_event_log_is_newest_first_then_by_event_id_then_by_webhook(
    tmp_path: Path, receiver: Receiver
) -> None:
    hooks = [webhook("b", receiver.url("/b")), webhook("a", receiver.url("/a"))]
    config = await prepare(write_config(tmp_path, hooks))
    db = config.database
    same = "2026-02-01T00:00:00.000Z"
    for event_id in ("evt_c", "evt_a", "evt_b"):
        insert_at(db, same, event_id)
    insert_at(db, "2026-02-02T00:00:00.000Z", "evt_new")
    insert_at(db, same, "evt_bad")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET type = 'order.lost' WHERE id = 'evt_bad'")
    await drain(config)

    async with admin_conn(db) as conn:
        rows = await admin.event_log(conn, None, None, 50)
    order = [(r["event_id"], r["webhook"]) for r in rows]
    assert order == [
        ("evt_new", "a"), ("evt_new", "b"),
        ("evt_a", "a"), ("evt_a", "b"), ("evt_b", "a"), ("evt_b", "b"),
        ("evt_bad", None),
        ("evt_c", "a"), ("evt_c", "b"),
    ]  # fmt: skip
    async with admin_conn(db) as conn:
        assert await admin.event_log(conn, None, None, 3) == rows[:3]
        assert await admin.event_log(conn, "a", "rejected", 50) == []


# --- enqueue agrees with the engine --------------------------------------------------------

examples = itertools.count()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@settings(
    max_examples=15,
    deadline=None,
    # One receiver serves every example; each example has its own path and database.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    type_=st.sampled_from(EVENT_TYPES) | st.text(max_size=15),
    store_id=st.text(min_size=1, max_size=8),
    data=st.dictionaries(st.text(max_size=5), json_values, max_size=4).map(json.dumps)
    | st.text(max_size=10),
)
async def test_enqueue_accepts_exactly_the_events_the_engine_delivers(
    receiver: Receiver, tmp_path: Path, type_: str, store_id: str, data: str
) -> None:
    path = f"/enqueued/{next(examples)}"
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    hooks = [webhook("all", receiver.url(path))]
    config = await prepare(write_config(folder, hooks, queue={"max_payload_bytes": 200}))
    async with admin_conn(config.database) as conn:
        try:
            await admin.enqueue(conn, type_, store_id, data, max_payload_bytes=200)
            accepted = True
        except UsageError:
            # What the command line refuses, a producer may still write with SQL.
            insert_event(config.database, type_, store_id, data)
            accepted = False
    await drain(config)
    ((event_id, state),) = query(config.database, "SELECT id, state FROM events")
    assert state == ("dispatched" if accepted else "rejected")
    assert [c.message["id"] for c in receiver.at(path)] == ([event_id] if accepted else [])
