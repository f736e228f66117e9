"""TLS through the real engine: certificates from a test CA (trustme), verified against
`http.ca_bundle`; every refusal is one attempt of kind `tls`. All servers run on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from dispatcher.config import load_config
from dispatcher.errors import ConfigError
from tests.conftest import Receiver, insert_event, query, webhook, write_config
from tests.helpers import drain, prepare


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca: trustme.CA, *names: str, **validity: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names, **validity).configure_cert(context)
    return context


@contextlib.asynccontextmanager
async def https_receiver(context: ssl.SSLContext | None) -> AsyncIterator[Receiver]:
    """The shared receiver's request handling behind TLS with `context` (plain if None)."""
    state = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


async def one_attempt(tmp_path: Path, url: str, **http: Any) -> tuple[Any, ...]:
    """Deliver one event to `url` without retries; return (status_code, error_kind, error)."""
    hooks = [webhook("secure", url)]
    path = write_config(tmp_path, hooks, http=http, retry={"max_retries": 0})
    config = await prepare(path)
    insert_event(config.database)
    await drain(config)
    rows = query(config.database, "SELECT status_code, error_kind, error FROM attempts")
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_certificate_from_the_configured_ca_bundle_is_trusted(
    tmp_path: Path, ca: trustme.CA, ca_bundle: Path, host: str
) -> None:
    async with https_receiver(server_context(ca, "localhost", "127.0.0.1")) as receiver:
        url = f"https://{host}:{receiver.port}/hook"
        row = await one_attempt(tmp_path, url, ca_bundle=str(ca_bundle))
        assert [c.path for c in receiver.received] == ["/hook"]

    assert row == (200, None, None)


async def test_a_certificate_from_an_unknown_ca_is_refused(tmp_path: Path, ca: trustme.CA) -> None:
    # No ca_bundle: the system's trust store does not know the test CA.
    async with https_receiver(server_context(ca, "127.0.0.1")) as receiver:
        url = f"https://127.0.0.1:{receiver.port}/hook"
        row = await one_attempt(tmp_path, url)
        assert receiver.received == []

    reason = "unable to get local issuer certificate"
    assert row == (None, "tls", f"certificate of 127.0.0.1:{receiver.port} refused: {reason}")


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "IP address mismatch, certificate is not valid for '127.0.0.1'."),
        ("localhost", "Hostname mismatch, certificate is not valid for 'localhost'."),
    ],
)
async def test_a_certificate_for_another_host_name_is_refused(
    tmp_path: Path, ca: trustme.CA, ca_bundle: Path, host: str, reason: str
) -> None:
    async with https_receiver(server_context(ca, "other.example")) as receiver:
        url = f"https://{host}:{receiver.port}/hook"
        row = await one_attempt(tmp_path, url, ca_bundle=str(ca_bundle))
        assert receiver.received == []

    assert row == (None, "tls", f"certificate of {host}:{receiver.port} refused: {reason}")


async def test_an_expired_certificate_is_refused(
    tmp_path: Path, ca: trustme.CA, ca_bundle: Path
) -> None:
    past = {
        "not_before": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        "not_after": datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC),
    }
    async with https_receiver(server_context(ca, "127.0.0.1", **past)) as receiver:
        url = f"https://127.0.0.1:{receiver.port}/hook"
        row = await one_attempt(tmp_path, url, ca_bundle=str(ca_bundle))

    assert row == (
        None,
        "tls",
        f"certificate of 127.0.0.1:{receiver.port} refused: certificate has expired",
    )


async def test_https_to_a_plain_http_server_is_a_failed_handshake(
    tmp_path: Path, receiver: Receiver, ca_bundle: Path
) -> None:
    # The plain server answers the TLS greeting with clear-text HTTP, which the client
    # cannot read as a TLS record; OpenSSL's exact complaint varies between its versions.
    url = f"https://127.0.0.1:{receiver.port}/hook"
    status, kind, error = await one_attempt(tmp_path, url, ca_bundle=str(ca_bundle))

    assert (status, kind) == (None, "tls")
    assert error.startswith(f"TLS handshake with 127.0.0.1:{receiver.port} failed: [SSL: ")
    assert receiver.received == []


async def test_a_handshake_that_never_completes_times_out_as_a_connect_timeout(
    tmp_path: Path,
) -> None:
    accepted = asyncio.Event()
    done = asyncio.Event()

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await done.wait()
        writer.transport.abort()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        row = await one_attempt(tmp_path, f"https://127.0.0.1:{port}/hook", connect_timeout="300ms")
    finally:
        done.set()
        server.close()
        await server.wait_closed()

    assert accepted.is_set()
    assert row == (None, "timeout", "connect timed out after 0.3s")


def test_plain_http_urls_are_refused_without_allow_http(tmp_path: Path) -> None:
    url = "http://hooks.example.com/in"
    path = write_config(tmp_path, [webhook("plain", url)], http={"allow_http": False})

    with pytest.raises(ConfigError) as refused:
        load_config(path)

    [problem] = refused.value.problems
    assert "webhooks[0].url: plain http:// is refused" in problem
    assert url in problem


def test_plain_http_is_accepted_for_a_webhook_that_allows_it(tmp_path: Path) -> None:
    hooks = [webhook("plain", "http://hooks.example.com/in", allow_http=True)]
    path = write_config(tmp_path, hooks, http={"allow_http": False})

    config = load_config(path)

    assert config.webhooks[0].allow_http
