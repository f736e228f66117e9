"""The daemon as a process: systemd notification, start-up warnings, refusal to start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.signing import generate_secret
from tests.conftest import Receiver, insert_event, query, webhook, write_config
from tests.helpers import start_daemon


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    yield address, sock
    sock.close()


async def _started(daemon: asyncio.subprocess.Process) -> list[str]:
    """Read the daemon's log lines until it reports having started; return them."""
    assert daemon.stderr is not None
    lines: list[str] = []
    while not any('"daemon_started"' in line for line in lines):
        line = await asyncio.wait_for(daemon.stderr.readline(), 20)
        assert line, f"the daemon ended before starting: {lines}"
        lines.append(line.decode())
    return lines


async def test_ready_and_stopping_are_sent_to_systemd(
    tmp_path: Path, receiver: Receiver, notify_socket: tuple[str, socket.socket]
) -> None:
    config = write_config(tmp_path, [webhook("w", receiver.url())])
    address, sock = notify_socket
    loop = asyncio.get_running_loop()
    daemon = await start_daemon(config, {**os.environ, "NOTIFY_SOCKET": address})
    try:
        ready = await asyncio.wait_for(loop.sock_recv(sock, 256), 20)
        assert ready == b"READY=1"
        daemon.send_signal(signal.SIGTERM)
        stopping = await asyncio.wait_for(loop.sock_recv(sock, 256), 20)
        assert stopping == b"STOPPING=1"
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()


async def test_a_literal_secret_in_a_world_readable_config_draws_a_warning(
    tmp_path: Path, receiver: Receiver
) -> None:
    secret = generate_secret()
    config = write_config(tmp_path, [webhook("w", receiver.url(), secret=secret)])
    config.chmod(0o644)
    daemon = await start_daemon(config)
    early = "".join(await _started(daemon))
    daemon.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(daemon.communicate(), 20)
    err = early.encode() + rest
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    warnings = [line for line in lines if line["event"] == "config_secrets_readable"]
    assert len(warnings) == 1
    assert warnings[0]["mode"] == "0o644"
    assert secret not in err.decode()


async def test_an_owner_only_config_draws_no_warning(tmp_path: Path, receiver: Receiver) -> None:
    config = write_config(tmp_path, [webhook("w", receiver.url(), secret=generate_secret())])
    config.chmod(0o600)
    daemon = await start_daemon(config)
    early = "".join(await _started(daemon))
    daemon.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(daemon.communicate(), 20)
    err = early.encode() + rest
    assert daemon.returncode == 0
    assert "config_secrets_readable" not in err.decode()
    assert "daemon_started" in err.decode()


async def test_sighup_reloads_the_webhooks_and_keeps_running(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_config(tmp_path, [webhook("first", receiver.url("/first"))])
    daemon = await start_daemon(config)
    await _started(daemon)
    write_config(tmp_path, [webhook("second", receiver.url("/second"))])
    daemon.send_signal(signal.SIGHUP)
    assert daemon.stderr is not None
    while b"config_reloaded" not in await asyncio.wait_for(daemon.stderr.readline(), 20):
        pass
    insert_event(tmp_path / "dispatcher.db")
    await receiver.wait_for(1)
    assert [c.path for c in receiver.received] == ["/second"]
    active = query(tmp_path / "dispatcher.db", "SELECT name, active FROM webhooks ORDER BY name")
    assert active == [("first", 0), ("second", 1)]
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.wait(), 20) == 0


async def test_sighup_with_a_broken_config_keeps_the_old_one(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_config(tmp_path, [webhook("first", receiver.url("/first"))])
    daemon = await start_daemon(config)
    await _started(daemon)
    config.write_text(config.read_text().replace("'*'", "'order.creatd'", 1))
    daemon.send_signal(signal.SIGHUP)
    assert daemon.stderr is not None
    line = b""
    while b"config_reload_failed" not in line:
        line = await asyncio.wait_for(daemon.stderr.readline(), 20)
    assert b"order.creatd" in line
    insert_event(tmp_path / "dispatcher.db")
    await receiver.wait_for(1)
    assert [c.path for c in receiver.received] == ["/first"]
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.wait(), 20) == 0


async def test_the_daemon_runs_on_uvloop_when_asked(tmp_path: Path, receiver: Receiver) -> None:
    config = write_config(tmp_path, [webhook("w", receiver.url())])
    daemon = await start_daemon(config, {**os.environ, "WEBHOOK_DISPATCHER_LOOP": "uvloop"})
    lines = await _started(daemon)
    started = next(json.loads(line) for line in lines if '"daemon_started"' in line)
    assert started["event_loop"] == "uvloop"
    insert_event(tmp_path / "dispatcher.db")
    await receiver.wait_for(1)
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.wait(), 20) == 0


async def test_an_unknown_event_loop_choice_is_refused_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, [webhook("w", "http://127.0.0.1:9/")])
    daemon = await start_daemon(config, {**os.environ, "WEBHOOK_DISPATCHER_LOOP": "trio"})
    _, err = await asyncio.wait_for(daemon.communicate(), 20)
    assert daemon.returncode == 1
    assert err.decode().strip().splitlines()[-1] == (
        "error: WEBHOOK_DISPATCHER_LOOP='trio' (valid: auto, uvloop, asyncio)"
    )


async def test_the_watchdog_is_pinged_while_the_loop_runs(
    tmp_path: Path, receiver: Receiver, notify_socket: tuple[str, socket.socket]
) -> None:
    config = write_config(tmp_path, [webhook("w", receiver.url())])
    address, sock = notify_socket
    loop = asyncio.get_running_loop()
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    daemon = await start_daemon(config, env)
    try:
        messages = [await asyncio.wait_for(loop.sock_recv(sock, 256), 20) for _ in range(4)]
        assert messages[0] == b"READY=1"
        assert messages[1:] == [b"WATCHDOG=1"] * 3
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
