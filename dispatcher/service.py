"""The process: lock, open, run the engine, react to signals, tell systemd how it goes."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import stat
import uuid
from collections.abc import Callable

import structlog

from dispatcher import __version__, database
from dispatcher.config import Config, load_config
from dispatcher.engine import Engine
from dispatcher.errors import ConfigError, DispatcherError
from dispatcher.sender import Sender
from dispatcher.store import Store

log = structlog.get_logger(__name__)


LOOP_VARIABLE = "WEBHOOK_DISPATCHER_LOOP"


def loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The event loop to run on: uvloop when it is installed (the `fast` extra) unless
    WEBHOOK_DISPATCHER_LOOP=asyncio says otherwise; the standard loop without it."""
    choice = os.environ.get(LOOP_VARIABLE, "auto")
    if choice not in ("auto", "uvloop", "asyncio"):
        raise DispatcherError(f"{LOOP_VARIABLE}={choice!r} (valid: auto, uvloop, asyncio)")
    if choice == "asyncio":
        return "asyncio", None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if choice == "uvloop":
            hint = "install webhook-dispatcher[fast]"
            raise DispatcherError(f"{LOOP_VARIABLE}=uvloop but uvloop is missing; {hint}") from exc
        return "asyncio", None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return "uvloop", factory


def run(config: Config) -> None:
    """Serve `config` on the chosen event loop until stopped."""
    name, factory = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(config, event_loop=name))


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
    if not config.has_literal_secret:
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


async def serve(config: Config, *, until_idle: bool = False, event_loop: str = "asyncio") -> None:
    """Run the daemon until SIGTERM or SIGINT (or until idle), then drain and return.

    SIGHUP reloads the configuration: a valid new one replaces the engine after the old
    one has drained like at shutdown; an invalid one is logged and the old one kept.
    """
    # Signals first, so that a stop requested during start-up is a clean stop too.
    signals = _Signals()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals.request_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, signals.request_reload)
    lock = database.DaemonLock(config.database)
    try:
        database.prepare_directory(config.database)
        lock.acquire()
        warn_if_readable_secrets(config)
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        store = await Store.open(config.database, owner)
        try:
            await _supervise(config, store, signals, until_idle, event_loop)
        finally:
            await store.close()
    finally:
        lock.release()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


class _Signals:
    """What the process has been asked to do; each request also ends the current engine."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self.engine_stop = asyncio.Event()

    def request_stop(self, signum: int) -> None:
        if not self.stop:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            sd_notify("STOPPING=1")
        self.stop = True
        self.engine_stop.set()

    def request_reload(self) -> None:
        log.info("reload_requested")
        sd_notify("RELOADING=1")
        self.reload = True
        self.engine_stop.set()


async def _supervise(
    config: Config, store: Store, signals: _Signals, until_idle: bool, event_loop: str
) -> None:
    log.info(
        "daemon_started",
        version=__version__,
        event_loop=event_loop,
        database=str(config.database),
        webhooks=len(config.webhooks),
    )
    sd_notify("READY=1")
    while True:
        await _run_engine(config, store, signals.engine_stop, until_idle)
        if not signals.reload or signals.stop:
            break
        config = _reloaded(config)
        signals.reload = False
        signals.engine_stop.clear()
        sd_notify("READY=1")
    log.info("daemon_stopped")


async def _run_engine(config: Config, store: Store, stop: asyncio.Event, until_idle: bool) -> None:
    sender = Sender(config.http)
    try:
        await sender.start()
        engine = Engine(config, store, sender)
        watchdog = asyncio.create_task(_watchdog(engine))
        try:
            await engine.run(stop, until_idle=until_idle)
        finally:
            watchdog.cancel()
    finally:
        await sender.close()


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (passed as WATCHDOG_USEC), or None without one."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def _watchdog(engine: Engine) -> None:
    """Tell systemd the daemon is alive, but only while the engine's loop is passing: a
    loop stuck on a hung call stops the pings, and systemd restarts the service."""
    interval = watchdog_interval()
    if interval is None:
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        if loop.time() - engine.heartbeat < 2 * interval:
            sd_notify("WATCHDOG=1")


def _reloaded(current: Config) -> Config:
    """The configuration file read again, or `current` when the new one is not usable."""
    try:
        fresh = load_config(current.path)
    except ConfigError as exc:
        log.error("config_reload_failed", problems=exc.problems)
        return current
    if fresh.database != current.database:
        log.error(
            "config_reload_failed",
            problems=[f"database: changing the database needs a restart ({fresh.database})"],
        )
        return current
    if fresh.logging != current.logging:
        # Loggers are bound once per process for speed, so their set-up stays as it was.
        log.warning("logging_change_needs_restart", logging=str(fresh.logging))
    warn_if_readable_secrets(fresh)
    log.info("config_reloaded", webhooks=len(fresh.webhooks))
    return fresh
