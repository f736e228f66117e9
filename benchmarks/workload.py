"""What the benchmarks send: events, queue databases filled with them, daemon configurations."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from dispatcher import clock, database, events, signing

STORES = ("store-1", "store-2", "store-3", "store-4", "store-5")
INSERT_EVENT = "INSERT INTO events (id, type, store_id, payload) VALUES (?, ?, ?, ?)"

# Bump when the rows `event_rows` makes change, so a cached backlog database is rebuilt.
WORKLOAD_VERSION = 1

EventRow = tuple[str, str, str, str]  # (id, type, store_id, payload)


def payload(number: int) -> str:
    """An order-sized JSON object (about 400 bytes), different for every event."""
    lines = [
        {"sku": f"SKU-{(number + k) % 9973:05d}", "quantity": k + 1, "price": f"{k + 9}.95"}
        for k in range(3)
    ]
    data = {
        "order_id": number,
        "status": "created",
        "currency": "EUR",
        "total": f"{number % 1000}.{number % 100:02d}",
        "customer": {"id": f"cus_{number % 50_000:06d}", "email": f"c{number}@example.com"},
        "lines": lines,
        "shipping": {"method": "standard", "country": "DE", "postcode": f"{number % 99999:05d}"},
    }
    return json.dumps(data, separators=(",", ":"))


def event_rows(count: int, prefix: str = "evt_bench") -> Iterator[EventRow]:
    """`count` events cycling through every event type and store; ids are `prefix` + number
    (producers may choose their own ids, and readable ones make the receiver's log useful)."""
    for number in range(count):
        yield (
            f"{prefix}{number:08d}",
            events.EVENT_TYPES[number % len(events.EVENT_TYPES)],
            STORES[number % len(STORES)],
            payload(number),
        )


def message_bodies(count: int) -> list[tuple[str, bytes]]:
    """The bodies the daemon would send for `event_rows(count)`, built the daemon's way."""
    stamp = clock.iso(clock.now())
    return [
        (event_id, events.envelope(event_id, type_, stamp, store, text))
        for event_id, type_, store, text in event_rows(count)
    ]


def create_database(path: Path) -> None:
    """An empty, migrated database, created by the daemon's own code."""

    async def migrate() -> None:
        conn = await database.connect(path)
        await conn.close()

    asyncio.run(migrate())


def fill(path: Path, rows: Iterator[EventRow]) -> None:
    """Insert queued events in one transaction: the fastest way SQLite takes many rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_EVENT, rows)
        conn.execute("COMMIT")
        # Fold the WAL back into the main file so that a copy of the file alone is complete.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def queue_database(path: Path, count: int) -> Path:
    """A fresh database at `path` holding `count` queued events (any old one is replaced)."""
    for old in (path, *_sidecars(path)):
        old.unlink(missing_ok=True)
    create_database(path)
    fill(path, event_rows(count))
    return path


def cached_queue_database(path: Path, cache: Path, count: int) -> Path:
    """Like `queue_database`, but built once under `cache` and copied: a million rows take
    far longer to insert than to copy."""
    template = cache / f"backlog-{count}-s{database.schema_version()}-w{WORKLOAD_VERSION}.db"
    if not template.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = template.with_suffix(".building")
        for leftover in (partial, *_sidecars(partial)):
            leftover.unlink(missing_ok=True)
        queue_database(partial, count)
        for sidecar in _sidecars(partial):
            sidecar.unlink(missing_ok=True)
        # Renamed only once complete, so an interrupted build is never taken for a cache hit.
        partial.rename(template)
    shutil.copyfile(template, path)
    os.chmod(path, 0o600)
    return path


def _sidecars(path: Path) -> tuple[Path, ...]:
    return tuple(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))


def webhook(name: str, url: str, max_in_flight: int, **extra: Any) -> dict[str, Any]:
    """A webhook subscribed to every event of every store, signing with a fresh secret."""
    return {
        "name": name,
        "url": url,
        "events": ["*"],
        "stores": ["*"],
        "secret": signing.generate_secret(),
        "max_in_flight": max_in_flight,
        **extra,
    }


def write_config(
    folder: Path, db: Path, webhooks: list[dict[str, Any]], max_in_flight: int, **extra: Any
) -> Path:
    """The daemon's YAML for one scenario: loopback plain HTTP allowed, warnings only."""
    document: dict[str, Any] = {
        "database": str(db),
        "http": {
            "allow_http": True,
            "allow_networks": ["127.0.0.1/32"],
            "max_in_flight": max_in_flight,
        },
        "logging": {"level": "warning", "format": "json"},
        # Attempts cut off at stop are handed back anyway; a long grace only slows the
        # scenarios that stop the daemon with a hanging endpoint still in flight.
        "shutdown_grace": "1s",
        "webhooks": webhooks,
        **extra,
    }
    path = folder / "config.yaml"
    # Owner-only, as the daemon asks of a file holding literal secrets.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(document, handle, sort_keys=False)
    return path
