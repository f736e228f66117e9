"""The process: lock, open, run the engine, react to signals, tell systemd how it goes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import uuid
from collections.abc import Callable

import structlog

from dispatcher import __version__, database
from dispatcher.config import Config
from dispatcher.engine import Engine
from dispatcher.sender import Sender
from dispatcher.store import Store

log = structlog.get_logger(__name__)


def sd_notify(message: str) -> None:
    """Tell systemd our state (READY=1, STOPPING=1) when it runs us as Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))


def warn_if_readable_secrets(config: Config) -> None:
    if not getattr(config, "has_literal_secret", False):
        return
    try:
        mode = config.path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "config_secrets_readable",
            path=str(config.path),
            mode=oct(mode & 0o777),
            hint="chmod 600 the file, or use ${ENV} / secret_file for secrets",
        )


async def serve(config: Config, *, until_idle: bool = False) -> None:
    """Run the daemon until SIGTERM or SIGINT (or until idle), then drain and return."""
    lock = database.DaemonLock(config.database)
    database.prepare_directory(config.database)
    lock.acquire()
    try:
        warn_if_readable_secrets(config)
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        store = await Store.open(config.database, owner)
        sender = Sender(config.http)
        try:
            await sender.start()
            await _run(config, Engine(config, store, sender), until_idle)
        finally:
            await sender.close()
            await store.close()
    finally:
        lock.release()


async def _run(config: Config, engine: Engine, until_idle: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stopper(stop, signum))
    log.info(
        "daemon_started",
        version=__version__,
        database=str(config.database),
        webhooks=len(config.webhooks),
    )
    sd_notify("READY=1")
    try:
        await engine.run(stop, until_idle=until_idle)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("daemon_stopped")


def _stopper(stop: asyncio.Event, signum: int) -> Callable[[], None]:
    def handler() -> None:
        if not stop.is_set():
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            sd_notify("STOPPING=1")
        stop.set()

    return handler
