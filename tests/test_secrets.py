"""Secrets end to end: deliveries verified by independent Standard Webhooks implementations,
header values taken from the environment, and no secret anywhere the dispatcher writes.

The verifiers are the `standardwebhooks` reference package and `svix`, so a signature that
only this project's own code accepts fails here.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import secrets as random_source
import signal
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import standardwebhooks
import svix.webhooks
from aiohttp import web

from dispatcher import database
from dispatcher.config import load_config
from dispatcher.signing import generate_secret
from tests.conftest import Captured, Receiver, insert_event, query, webhook, write_config
from tests.helpers import drain, prepare


class Verify(Protocol):
    def __call__(self, secret: str, captured: Captured) -> None: ...


def verify_standardwebhooks(secret: str, captured: Captured) -> None:
    standardwebhooks.Webhook(secret).verify(captured.body, captured.headers)


def verify_svix(secret: str, captured: Captured) -> None:
    svix.webhooks.Webhook(secret).verify(captured.body, captured.headers)


VERIFIERS = [
    pytest.param(verify_standardwebhooks, id="standardwebhooks"),
    pytest.param(verify_svix, id="svix"),
]


async def deliver_once(tmp_path: Path, receiver: Receiver, **hook: Any) -> Captured:
    config = await prepare(write_config(tmp_path, [webhook("signed", receiver.url(), **hook)]))
    insert_event(config.database, payload='{"order_id": 42, "note": "caf\u00e9"}')
    await drain(config)
    [captured] = receiver.received
    return captured


# --- signatures ------------------------------------------------------------------------------


@pytest.mark.parametrize("verify", VERIFIERS)
async def test_a_signed_delivery_verifies_with_an_independent_implementation(
    tmp_path: Path, receiver: Receiver, verify: Verify
) -> None:
    secret = generate_secret()
    captured = await deliver_once(tmp_path, receiver, secret=secret)

    verify(secret, captured)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verify(generate_secret(), captured)


@pytest.mark.parametrize("verify", VERIFIERS)
async def test_during_a_rotation_each_secret_alone_verifies(
    tmp_path: Path, receiver: Receiver, verify: Verify
) -> None:
    new, old = generate_secret(), generate_secret()
    captured = await deliver_once(tmp_path, receiver, secrets=[new, old])

    assert len(captured.headers["webhook-signature"].split(" ")) == 2
    verify(new, captured)
    verify(old, captured)


@pytest.mark.parametrize("verify", VERIFIERS)
async def test_a_tampered_delivery_fails_verification(
    tmp_path: Path, receiver: Receiver, verify: Verify
) -> None:
    secret = generate_secret()
    captured = await deliver_once(tmp_path, receiver, secret=secret)
    headers = captured.headers
    timestamp = int(headers["webhook-timestamp"])
    tampered = [
        dataclasses.replace(captured, body=captured.body.replace(b"42", b"43")),
        dataclasses.replace(captured, headers={**headers, "webhook-id": "evt_other"}),
        dataclasses.replace(captured, headers={**headers, "webhook-timestamp": str(timestamp + 1)}),
    ]

    verify(secret, captured)
    for forged in tampered:
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            verify(secret, forged)


async def test_a_retry_is_signed_afresh_under_the_same_webhook_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    answers = iter([503, 200])

    async def flaky(request: web.Request) -> web.StreamResponse:
        return web.Response(status=next(answers))

    receiver.on("/flaky", flaky)
    secret = generate_secret()
    hooks = [webhook("flaky", receiver.url("/flaky"), secret=secret)]
    # One second apart at least, so the retry's whole-second timestamp must differ.
    path = write_config(tmp_path, hooks, retry={"max_retries": 1, "backoff": ["1s"]})
    config = await prepare(path)
    event_id = insert_event(config.database)
    await drain(config)

    first, retry = receiver.received
    assert first.headers["webhook-id"] == retry.headers["webhook-id"] == event_id
    assert int(retry.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert retry.headers["webhook-signature"] != first.headers["webhook-signature"]
    for captured in (first, retry):
        verify_standardwebhooks(secret, captured)
        verify_svix(secret, captured)


# --- headers ---------------------------------------------------------------------------------


async def test_custom_headers_take_their_values_from_the_environment(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = random_source.token_hex(16)
    monkeypatch.setenv("HOOK_TOKEN", token)
    headers = {"Authorization": "Bearer ${HOOK_TOKEN}", "X-Source": "shop"}
    captured = await deliver_once(tmp_path, receiver, headers=headers)

    assert captured.headers["Authorization"] == f"Bearer {token}"
    assert captured.headers["X-Source"] == "shop"


async def test_a_header_value_echoed_by_the_endpoint_is_hidden_in_the_excerpt(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok_" + random_source.token_hex(16)
    monkeypatch.setenv("HOOK_TOKEN", token)
    limit = 100

    async def echo_whole(request: web.Request) -> web.StreamResponse:
        return web.Response(status=401, text=f"refused {request.headers['Authorization']}!")

    async def echo_token(request: web.Request) -> web.StreamResponse:
        return web.Response(status=401, text=f"unknown token {token}")

    async def echo_cut(request: web.Request) -> web.StreamResponse:
        # The token straddles the excerpt limit: only its first ten characters fit.
        return web.Response(status=401, text="x" * (limit - 10) + token)

    for behaviour in (echo_whole, echo_token, echo_cut):
        receiver.on(f"/{behaviour.__name__}", behaviour)
    headers = {"Authorization": "Bearer ${HOOK_TOKEN}"}
    hooks = [
        webhook(name, receiver.url(f"/{name}"), headers=headers)
        for name in ("echo_whole", "echo_token", "echo_cut")
    ]
    path = write_config(
        tmp_path, hooks, http={"response_excerpt_bytes": limit}, retry={"max_retries": 0}
    )
    config = await prepare(path)
    insert_event(config.database)
    await drain(config)

    rows = query(
        config.database,
        "SELECT d.webhook, a.response_excerpt FROM attempts AS a"
        " JOIN deliveries AS d ON d.id = a.delivery_id",
    )
    assert dict(rows) == {
        "echo_whole": "refused [redacted]!",
        "echo_token": "unknown token [redacted]",
        "echo_cut": "x" * (limit - 10) + "[redacted]",
    }


# --- nothing leaks ---------------------------------------------------------------------------


class Leak(Protocol):
    def __call__(self, where: str, content: str | bytes) -> None: ...


def forbidden_forms(secret: str) -> Iterator[str | bytes]:
    """Every form in which a whsec_ secret could leak: whole, its base64 text without the
    padding (so padded and unpadded copies both match), and the raw key."""
    encoded = secret.removeprefix("whsec_")
    yield secret
    yield encoded.rstrip("=")
    yield base64.b64decode(encoded)


def leak_checker(secrets: list[str], values: list[str]) -> Leak:
    forms: list[str | bytes] = [form for secret in secrets for form in forbidden_forms(secret)]
    forms.extend(values)

    def check(where: str, content: str | bytes) -> None:
        for form in forms:
            if isinstance(content, bytes):
                needle = form if isinstance(form, bytes) else form.encode()
                assert needle not in content, f"a secret leaked into {where}"
            elif isinstance(form, str):
                assert form not in content, f"a secret leaked into {where}"

    return check


async def run_cli(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode() + err.decode()


async def run_daemon_until(
    config_path: Path, log_path: Path, receiver: Receiver, count: int
) -> None:
    """Run `webhook-dispatcher run` until the receiver has seen `count` requests, then stop it
    with SIGTERM (which lets attempts in flight finish and be recorded)."""
    with log_path.open("wb") as log:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatcher",
            "run",
            "-c",
            str(config_path),
            stdout=log,
            stderr=log,
        )
    try:
        await receiver.wait_for(count, timeout=20)
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()


def database_cells(db: Path) -> Iterator[tuple[str, Any]]:
    with sqlite3.connect(db) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):
                for cell in row:
                    yield table, cell


async def test_no_secret_reaches_the_logs_the_cli_or_the_database(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    literal, from_env, from_file = generate_secret(), generate_secret(), generate_secret()
    token = "tok_" + random_source.token_hex(16)
    monkeypatch.setenv("ENV_SECRET", from_env)
    monkeypatch.setenv("HOOK_TOKEN", token)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "hook.secret").write_text(from_file + "\n")

    answers = iter([500, 200])

    async def flaky(request: web.Request) -> web.StreamResponse:
        return web.Response(status=next(answers))

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(request.headers), status=401)

    receiver.on("/flaky", flaky)
    receiver.on("/echo", echo)
    auth = {"Authorization": "Bearer ${HOOK_TOKEN}"}
    hooks = [
        webhook("literal", receiver.url("/ok"), secret=literal, headers=auth),
        webhook("from-env", receiver.url("/flaky"), secret="${ENV_SECRET}", headers=auth),
        webhook("from-file", receiver.url("/echo"), secret_file="hook.secret", headers=auth),
    ]
    logging = {"level": "debug", "format": "json"}
    path = write_config(tmp_path, hooks, retry={"max_retries": 1}, logging=logging)
    config = await prepare(path)
    event_id = insert_event(config.database)

    log_path = tmp_path / "daemon.log"
    await run_daemon_until(path, log_path, receiver, count=5)
    outputs = {
        command: await run_cli(*command.split(), "-c", str(path))
        for command in (
            "status --json",
            "events --json",
            f"attempts {event_id} --json",
            "check-config",
        )
    }

    # The run did what the check needs: successes, a retry, a failure, an echoed header.
    states = query(config.database, "SELECT webhook, state, attempts FROM deliveries")
    assert sorted(states) == [
        ("from-env", "succeeded", 2),
        ("from-file", "failed", 2),
        ("literal", "succeeded", 1),
    ]
    log_text = log_path.read_text()
    logged = [json.loads(line)["event"] for line in log_text.splitlines()]
    assert {"attempt_succeeded", "attempt_failed", "delivery_failed"} <= set(logged)
    excerpts = query(config.database, "SELECT response_excerpt FROM attempts")
    assert any("[redacted]" in (excerpt or "") for (excerpt,) in excerpts)

    check = leak_checker([literal, from_env, from_file], [token])
    check("the daemon's log", log_text)
    for command, output in outputs.items():
        check(f"the output of {command}", output)
    for table, cell in database_cells(config.database):
        if isinstance(cell, str | bytes):
            check(f"table {table}", cell)
    for suffix in ("", "-wal", "-shm"):
        file = config.database.with_name(config.database.name + suffix)
        if file.exists():
            check(file.name, file.read_bytes())


def test_the_loaded_configuration_prints_no_secret(tmp_path: Path) -> None:
    literal, from_env, from_file = generate_secret(), generate_secret(), generate_secret()
    token = "tok_" + random_source.token_hex(16)
    (tmp_path / "hook.secret").write_text(from_file)
    auth = {"Authorization": "Bearer ${HOOK_TOKEN}"}
    hooks = [
        webhook(
            "literal", "https://a.example/in", secrets=[literal, "${ENV_SECRET}"], headers=auth
        ),
        webhook("from-file", "https://b.example/in", secret_file="hook.secret"),
    ]
    env = {"ENV_SECRET": from_env, "HOOK_TOKEN": token}

    config = load_config(write_config(tmp_path, hooks), env)

    assert len(config.webhooks[0].secrets) == 2
    check = leak_checker([literal, from_env, from_file], [token])
    check("repr(config)", repr(config))
    check("str(config)", str(config))
    for hook in config.webhooks:
        check("repr(webhook)", repr(hook))
        for secret in hook.secrets:
            check("repr(secret)", repr(secret))
            assert repr(secret.key) not in repr(config)


async def test_a_new_database_and_its_new_directory_are_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "lib" / "dispatcher"
    db = folder / "dispatcher.db"

    # A permissive umask, so only the dispatcher's own choice of modes can pass.
    previous = os.umask(0o002)
    try:
        conn = await database.connect(db)
        try:
            insert_event(db)  # a write, so that the -wal and -shm files exist now
            modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in folder.iterdir()}
        finally:
            await conn.close()
    finally:
        os.umask(previous)

    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert modes == {
        "dispatcher.db": 0o600,
        "dispatcher.db-wal": 0o600,
        "dispatcher.db-shm": 0o600,
    }
