"""Running the real engine inside a test's event loop, and the real CLI beside it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
async def running(config: Config, **engine_options: Any) -> AsyncIterator[Engine]:
    """The engine running in the background until the block ends, then stopped gracefully."""
    store = await Store.open(config.database, "test-owner")
    sender = Sender(config.http)
    await sender.start()
    engine = Engine(config, store, sender, **engine_options)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    try:
        yield engine
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await sender.close()
        await store.close()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def run_cli(*args: str | Path, timeout: float = 30.0, **env: str) -> Result:
    """Run `python -m dispatcher ARGS` to completion, with `env` added to the environment."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


class Daemon:
    """`python -m dispatcher run` as a child process, its logs kept in a file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.with_name("daemon.log")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start it and wait until it says it is delivering, with its signal handlers set."""
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dispatcher", "run", "-c", str(self.config), stderr=log
            )
        await wait_until(lambda: "daemon_started" in self.log.read_text() or self.exited)

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    async def stop(self) -> int:
        """SIGTERM, as systemd stops it; return the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 15)


async def start_daemon(
    config: Path, env: dict[str, str] | None = None, *, stdout: Any = asyncio.subprocess.DEVNULL
) -> asyncio.subprocess.Process:
    """`python -m dispatcher run -c CONFIG` as a child process, its log lines on a pipe."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        "run",
        "-c",
        str(config),
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
