"""Running the real engine inside a test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from dispatcher import database
from dispatcher.config import Config, load_config
from dispatcher.engine import Engine
from dispatcher.sender import Sender
from dispatcher.store import Store


async def prepare(config_path: Path) -> Config:
    """Load the configuration and create the database, as the daemon's start would."""
    config = load_config(config_path)
    conn = await database.connect(config.database)
    await conn.close()
    return config


async def drain(config: Config, timeout: float = 20.0) -> Engine:
    """Run the engine until every event is fanned out and every delivery finished."""
    store = await Store.open(config.database, "test-owner")
    sender = Sender(config.http)
    await sender.start()
    engine = Engine(config, store, sender)
    try:
        await asyncio.wait_for(engine.run(asyncio.Event(), until_idle=True), timeout)
    finally:
        await sender.close()
        await store.close()
    return engine


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Engine]:
    """The engine running in the background until the block ends, then stopped gracefully."""
    store = await Store.open(config.database, "test-owner")
    sender = Sender(config.http)
    await sender.start()
    engine = Engine(config, store, sender)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    try:
        yield engine
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await sender.close()
        await store.close()
