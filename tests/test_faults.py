"""Nothing lost: a killed daemon, a stopped daemon, a locked or unusable database."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from dispatcher import database
from dispatcher.errors import StoreError
from tests.conftest import Receiver, query, webhook, write_config
from tests.helpers import drain, prepare, running, start_daemon


def _bulk_insert(db: Path, count: int) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO events (type, store_id, payload) VALUES ('order.created', 's', ?)",
            [(f'{{"n": {i}}}',) for i in range(count)],
        )


async def _until(condition: object, timeout: float, what: str) -> None:
    """Poll `condition()` every 20 ms until it holds; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_sigkill_mid_burst_loses_nothing_and_bounds_duplicates(
    tmp_path: Path, receiver: Receiver
) -> None:
    hooks = [webhook("a", receiver.url("/a")), webhook("b", receiver.url("/b"))]
    config_path = write_config(tmp_path, hooks, http={"max_in_flight_per_endpoint": 16})
    config = await prepare(config_path)
    _bulk_insert(config.database, 5000)

    daemon = await start_daemon(config_path)
    await receiver.wait_for(2000, timeout=60)
    daemon.kill()
    await daemon.wait()
    in_flight_at_kill = {
        (event_id, webhook_name)
        for event_id, webhook_name in query(
            config.database,
            "SELECT event_id, webhook FROM deliveries WHERE state = 'in_flight'",
        )
    }

    daemon = await start_daemon(config_path)
    done = "SELECT count(*) FROM deliveries WHERE state = 'succeeded'"
    await _until(lambda: query(config.database, done)[0][0] == 10_000, 90, "every delivery")
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.wait(), 15) == 0

    arrivals = Counter((c.headers["webhook-id"], c.path[1:]) for c in receiver.received)
    expected = {(e, w) for (e,) in query(config.database, "SELECT id FROM events") for w in "ab"}
    assert set(arrivals) == expected
    duplicated = {pair for pair, count in arrivals.items() if count > 1}
    assert duplicated <= in_flight_at_kill
    left = query(config.database, "SELECT count(*) FROM deliveries WHERE state != 'succeeded'")
    assert left == [(0,)]


async def test_sigterm_records_every_answered_attempt_and_exits_within_grace(
    tmp_path: Path, receiver: Receiver
) -> None:
    answered: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        answered.append(request.headers["webhook-id"])
        return web.Response(status=200)

    receiver.on("/slow", slow)
    hooks = [webhook("slow", receiver.url("/slow"), max_in_flight=8)]
    config_path = write_config(tmp_path, hooks, shutdown_grace="3s")
    config = await prepare(config_path)
    _bulk_insert(config.database, 200)

    daemon = await start_daemon(config_path)
    await receiver.wait_for(12, timeout=30)
    stopped_at = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.wait(), 10) == 0
    assert time.monotonic() - stopped_at < 3.0 + 1.5

    recorded = query(
        config.database,
        "SELECT d.event_id FROM attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id"
        " WHERE a.status_code = 200",
    )
    assert {r[0] for r in recorded} == set(answered)
    assert query(config.database, "SELECT count(*) FROM deliveries WHERE state = 'in_flight'") == [
        (0,)
    ]
    pending = query(config.database, "SELECT count(*) FROM deliveries WHERE state = 'pending'")
    assert pending[0][0] == 200 - len(answered)


async def test_a_write_lock_held_by_another_process_delays_but_loses_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await prepare(write_config(tmp_path, [webhook("w", receiver.url())]))
    _bulk_insert(config.database, 300)
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with sqlite3.connect(config.database, timeout=10) as conn:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(10)
            conn.rollback()

    async with running(config):
        await receiver.wait_for(50, timeout=20)
        holder = threading.Thread(target=hold_lock)
        holder.start()
        await asyncio.to_thread(locked.wait, 10)
        await asyncio.sleep(3)
        release.set()
        await asyncio.to_thread(holder.join, 10)
        await receiver.wait_for(300, timeout=30)
        done = "SELECT count(*) FROM deliveries WHERE state = 'succeeded'"
        await _until(lambda: query(config.database, done)[0][0] == 300, 20, "all recorded")
    attempts = query(config.database, "SELECT count(*) FROM attempts")[0][0]
    assert attempts == len(receiver.received)


async def test_a_retry_schedule_survives_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=500)

    receiver.on("/down", down)
    hooks = [webhook("d", receiver.url("/down"))]
    config = await prepare(write_config(tmp_path, hooks, retry={"backoff": ["1h"]}))
    _bulk_insert(config.database, 1)
    async with running(config):
        await receiver.wait_for(1)
        await _until(
            lambda: query(config.database, "SELECT attempts FROM deliveries") == [(1,)],
            10,
            "the attempt recorded",
        )
    (due,) = query(config.database, "SELECT next_attempt_at FROM deliveries")[0]
    async with running(config):
        await asyncio.sleep(0.5)
    assert len(receiver.received) == 1
    assert query(config.database, "SELECT state, next_attempt_at FROM deliveries") == [
        ("pending", due)
    ]


async def test_a_missing_database_directory_is_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new" / "nested" / "dispatcher.db"
    conn = await database.connect(path)
    await conn.close()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_database_path_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the directory"):
        await database.connect(blocker / "dispatcher.db")


async def test_a_database_path_that_is_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "dispatcher.db"
    folder.mkdir()
    with pytest.raises(StoreError, match="cannot"):
        await database.connect(folder)


async def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.db"
    content = b"this is a spreadsheet, not a database" * 100
    path.write_bytes(content)
    with pytest.raises(StoreError, match="not a SQLite database"):
        await database.connect(path)
    assert path.read_bytes() == content


async def test_a_corrupt_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    damaged = bytearray(path.read_bytes())
    damaged[100:4096] = os.urandom(4096 - 100)
    path.write_bytes(bytes(damaged))
    with pytest.raises(StoreError):
        await database.connect(path)
    assert path.read_bytes() == bytes(damaged)


async def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another application"):
        await database.connect(path)
    assert path.read_bytes() == before


async def test_run_refuses_a_foreign_database_with_one_line_and_exit_1(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, [webhook("w", "http://127.0.0.1:9/")])
    with sqlite3.connect(tmp_path / "dispatcher.db") as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    proc = await start_daemon(config_path)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert "another application" in err.decode()


async def test_two_daemons_never_share_a_database(tmp_path: Path, receiver: Receiver) -> None:
    config = await prepare(write_config(tmp_path, [webhook("w", receiver.url())]))
    lock = database.DaemonLock(config.database)
    lock.acquire()
    try:
        with pytest.raises(StoreError, match="another webhook-dispatcher"):
            database.DaemonLock(config.database).acquire()
    finally:
        lock.release()
    await drain(config)


async def test_processes_opening_a_new_database_together_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.db"
    script = (
        "import asyncio, sys\n"
        "from dispatcher import database\n"
        "async def main():\n"
        "    conn = await database.connect(__import__('pathlib').Path(sys.argv[1]))\n"
        "    await conn.close()\n"
        "asyncio.run(main())\n"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(path), stderr=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    results = [await asyncio.wait_for(p.communicate(), 30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in results]
    assert query(path, "PRAGMA user_version") == [(database.schema_version(),)]


async def test_an_expired_lease_of_another_process_is_swept_while_running(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await prepare(write_config(tmp_path, [webhook("w", receiver.url())]))
    async with running(config, sweep_interval=0.1):
        _bulk_insert(config.database, 1)
        done = "SELECT state, attempts FROM deliveries"
        await _until(lambda: query(config.database, done) == [("succeeded", 1)], 10, "sent")
        # As if another daemon had claimed it again and died, its lease long expired.
        with sqlite3.connect(config.database) as conn:
            conn.execute(
                "UPDATE deliveries SET state = 'in_flight', lease_owner = 'gone:1',"
                " lease_expires_at = '2000-01-01T00:00:00.000Z'"
            )
        await receiver.wait_for(2)
        await _until(lambda: query(config.database, done) == [("succeeded", 2)], 10, "redone")
    ids = {c.headers["webhook-id"] for c in receiver.received}
    assert len(ids) == 1


async def test_outcomes_wait_in_memory_while_the_database_cannot_take_them(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await prepare(write_config(tmp_path, [webhook("w", receiver.url())]))
    async with running(config):
        with sqlite3.connect(config.database) as conn:
            conn.execute("ALTER TABLE attempts RENAME TO attempts_away")
        _bulk_insert(config.database, 20)
        await receiver.wait_for(20)
        await asyncio.sleep(0.3)  # the recorder has failed at least once by now
        assert query(config.database, "SELECT count(*) FROM attempts_away") == [(0,)]
        with sqlite3.connect(config.database) as conn:
            conn.execute("ALTER TABLE attempts_away RENAME TO attempts")
        done = "SELECT count(*) FROM deliveries WHERE state = 'succeeded'"
        await _until(lambda: query(config.database, done) == [(20,)], 15, "all recorded")
    assert query(config.database, "SELECT count(*) FROM attempts") == [(20,)]
