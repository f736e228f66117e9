"""Opening the SQLite file: checks, pragmas, migrations, and the write-transaction helper."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import IO, TypeVar

import aiosqlite
import structlog

from dispatcher.errors import StoreError

log = structlog.get_logger(__name__)

T = TypeVar("T")

SQLITE_HEADER = b"SQLite format 3\x00"
MIGRATIONS: tuple[str, ...] = ("schema.sql",)
OUR_TABLES = frozenset({"events", "webhooks", "deliveries", "attempts"})

# SQLite waits this long for another writer itself; past it the helper below backs off
# and tries again, so a long-held lock delays the daemon without losing anything.
BUSY_TIMEOUT_MS = 2000
LOCKED_RETRY_MAX_DELAY = 2.0


def schema_version() -> int:
    return len(MIGRATIONS)


def check_file(path: Path) -> None:
    """Refuse a file that exists but is not a SQLite database, before SQLite touches it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the database: {exc.strerror}") from exc
    if header != SQLITE_HEADER:
        raise StoreError(f"{path}: not a SQLite database; refusing to touch it")


def prepare_directory(path: Path) -> None:
    """Create the database's directory owner-only when it does not exist yet."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot create the directory: {exc.strerror}") from exc


async def connect(path: Path) -> aiosqlite.Connection:
    """Open (creating if needed) and migrate the database at `path`."""
    # These file checks block for microseconds on a local disk, once at start.
    prepare_directory(path)
    check_file(path)
    created = not path.exists()  # noqa: ASYNC240
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the database: {exc}") from exc
    try:
        if created:
            os.chmod(path, 0o600)
        # Inspect before configuring: switching to WAL rewrites the file header, and a
        # file that is not ours must be left exactly as it was found.
        version = await _inspect(conn, path)
        await _configure(conn)
        await _migrate(conn, version)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _configure(conn: aiosqlite.Connection) -> None:
    try:
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot configure the database: {exc}") from exc


async def _inspect(conn: aiosqlite.Connection, path: Path) -> int:
    """The schema version of the file, after checking that it is ours (or empty)."""
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = await scalar(conn, "PRAGMA user_version")
        tables = {
            row[0]
            for row in await conn.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: unreadable database ({exc}); refusing to touch it") from exc
    if version == 0 and tables - {"sqlite_sequence"}:
        raise StoreError(
            f"{path}: holds tables of another application ({', '.join(sorted(tables))}); "
            "refusing to touch it"
        )
    if version > schema_version():
        raise StoreError(
            f"{path}: schema version {version} is newer than this release knows "
            f"({schema_version()}); upgrade webhook-dispatcher"
        )
    return version


async def _migrate(conn: aiosqlite.Connection, version: int) -> None:
    if version >= schema_version():
        return
    try:
        await conn.execute("BEGIN IMMEDIATE")
        # Another process (a producer's first enqueue, say) may have migrated the file
        # while this one waited for the write lock: read the version again under it.
        current = await scalar(conn, "PRAGMA user_version")
        for number in range(current + 1, schema_version() + 1):
            for statement in _statements(MIGRATIONS[number - 1]):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number}")
            log.info("schema_migrated", version=number)
        await conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise StoreError(f"cannot migrate the database: {exc}") from exc


def migration_script(name: str) -> str:
    return resources.files("dispatcher").joinpath(name).read_text()


def _statements(name: str) -> list[str]:
    """The statements of a migration file, split where SQLite says one is complete."""
    script = migration_script(name)
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip() and not all(
        part.strip().startswith("--") for part in current.strip().splitlines()
    ):
        raise StoreError(f"{name}: ends with an incomplete statement")
    return statements


async def scalar(conn: aiosqlite.Connection, sql: str, params: tuple[object, ...] = ()) -> int:
    rows = list(await conn.execute_fetchall(sql, params))
    value = rows[0][0] if rows else None
    return int(value or 0)


def is_locked(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


async def write(
    conn: aiosqlite.Connection, body: Callable[[aiosqlite.Connection], Awaitable[T]]
) -> T:
    """Run `body` in one IMMEDIATE transaction, retried while another writer holds the
    lock. Any other SQLite error becomes a StoreError."""
    return await while_locked(lambda: _transaction(conn, body))


async def while_locked(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run `attempt`, waiting and trying again with growing pauses while the database is
    locked by another writer; any other SQLite error becomes a StoreError."""
    delay = 0.05
    while True:
        try:
            return await attempt()
        except sqlite3.OperationalError as exc:
            if not is_locked(exc):
                raise StoreError(f"database write failed: {exc}") from exc
            log.warning("database_locked", retry_in_s=round(delay, 3))
        except sqlite3.Error as exc:
            raise StoreError(f"database write failed: {exc}") from exc
        await asyncio.sleep(delay)
        delay = min(delay * 2, LOCKED_RETRY_MAX_DELAY)


async def _transaction(
    conn: aiosqlite.Connection, body: Callable[[aiosqlite.Connection], Awaitable[T]]
) -> T:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        result = await body(conn)
        await conn.execute("COMMIT")
    except BaseException:
        # The rollback must run even when the caller is being cancelled, or the
        # connection stays inside a transaction that blocks every other writer.
        await asyncio.shield(_rollback(conn))
        raise
    return result


async def _rollback(conn: aiosqlite.Connection) -> None:
    if conn.in_transaction:
        await conn.execute("ROLLBACK")


class DaemonLock:
    """An exclusive lock beside the database, so that two daemons never share one file.

    Holding it lets the daemon treat every lease left in the database as abandoned.
    """

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        handle = self.path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise StoreError(
                f"{self.path}: another webhook-dispatcher is running on this database"
            ) from exc
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
