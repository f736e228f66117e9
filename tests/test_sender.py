"""The sender against hostile endpoints, through the real engine: every misbehaviour becomes
one failed attempt with a precise error kind in the `attempts` table.

Every connection goes to 127.0.0.1. Endpoints that break HTTP itself are raw TCP servers
started by the test; the rest are the shared aiohttp receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dispatcher import clock
from tests.conftest import Behaviour, Receiver, insert_event, query, webhook, write_config
from tests.helpers import drain, prepare, running

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Event], Awaitable[None]]

HUGE_BODY = 50 * 2**20
EXCERPT_BYTES = 100


@contextlib.asynccontextmanager
async def raw_endpoint(answer: Answer) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that reads a request head and then lets `answer` misbehave.

    Yields the endpoint URL. `answer` gets an event that is set when the test ends, so an
    endpoint that never answers can wait on it and finish cleanly.
    """
    done = asyncio.Event()
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await answer(reader, writer, done)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the dispatcher hung up first, which is what most of these tests expect
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        done.set()
        server.close()
        await asyncio.wait_for(asyncio.gather(*handlers), 5)
        await server.wait_closed()


async def one_attempt(tmp_path: Path, url: str, **hook: Any) -> dict[str, Any]:
    """Deliver one event to `url` with no retries; return its single attempt row."""
    config = await prepare(
        write_config(tmp_path, [webhook("hostile", url, **hook)], retry={"max_retries": 0})
    )
    insert_event(config.database)
    await drain(config)
    rows = attempt_rows(config.database)
    assert len(rows) == 1, rows
    return rows[0]


def attempt_rows(db: Path) -> list[dict[str, Any]]:
    columns = (
        "webhook",
        "number",
        "status_code",
        "error_kind",
        "error",
        "duration_ms",
        "response_excerpt",
        "started_at",
    )
    sql = (
        f"SELECT d.webhook, {', '.join('a.' + c for c in columns[1:])} FROM attempts AS a"
        " JOIN deliveries AS d ON d.id = a.delivery_id ORDER BY d.webhook, a.number"
    )
    return [dict(zip(columns, row, strict=True)) for row in query(db, sql)]


def answer_with(status: int, headers: dict[str, str] | None = None) -> Behaviour:
    async def behaviour(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers=headers)

    return behaviour


def free_port() -> int:
    """A port nothing listens on: bound by the kernel, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- timeouts --------------------------------------------------------------------------------


async def test_an_endpoint_that_never_answers_times_out_after_the_webhook_timeout(
    tmp_path: Path,
) -> None:
    async def silent(
        _r: asyncio.StreamReader, _w: asyncio.StreamWriter, done: asyncio.Event
    ) -> None:
        await done.wait()

    async with raw_endpoint(silent) as url:
        row = await one_attempt(tmp_path, url, timeout="500ms")

    assert (row["status_code"], row["error_kind"]) == (None, "timeout")
    assert row["error"] == "timed out after 0.5s waiting for the answer"
    assert 450 <= row["duration_ms"] < 1500


def drip(head: bytes, dripped: bytes) -> Answer:
    """An answer that sends `head` at once, then `dripped` one byte every 0.2 s."""

    async def answer(
        _r: asyncio.StreamReader, writer: asyncio.StreamWriter, done: asyncio.Event
    ) -> None:
        writer.write(head)
        await writer.drain()
        for byte in dripped:
            if done.is_set():
                return
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)  # the slowness under test, not a wait for something

    return answer


SLOW_BODY = b"x" * 100


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        pytest.param(
            drip(b"", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            None,
            "timed out after 1s waiting for the answer",
            id="status-line-dripped",
        ),
        pytest.param(
            drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", SLOW_BODY),
            200,
            "timed out after 1s reading the body of HTTP 200",
            id="body-dripped",
        ),
    ],
)
async def test_a_dripping_endpoint_times_out_on_the_total_timeout_not_per_read(
    tmp_path: Path, answer: Answer, status: int | None, error: str
) -> None:
    # Every byte arrives well within any per-read timeout; only a deadline for the whole
    # attempt stops an answer that would take 8 to 20 seconds.
    async with raw_endpoint(answer) as url:
        row = await one_attempt(tmp_path, url, timeout="1s")

    assert (row["status_code"], row["error_kind"], row["error"]) == (status, "timeout", error)
    assert 950 <= row["duration_ms"] < 2000


# --- broken connections ----------------------------------------------------------------------


async def test_a_refused_connection_is_a_connect_error(tmp_path: Path) -> None:
    port = free_port()
    row = await one_attempt(tmp_path, f"http://127.0.0.1:{port}/hook")

    assert (row["status_code"], row["error_kind"]) == (None, "connect")
    assert row["error"] == f"cannot connect to 127.0.0.1:{port}: Connection refused"


def cut(sent: bytes, *, reset: bool) -> Answer:
    """An answer that sends `sent` and then drops the connection, with a TCP reset if
    `reset` (SO_LINGER 0) or with an orderly close."""

    async def answer(
        _r: asyncio.StreamReader, writer: asyncio.StreamWriter, _d: asyncio.Event
    ) -> None:
        writer.write(sent)
        await writer.drain()
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()

    return answer


RESET_BEFORE_ANSWER = "connection reset by the endpoint before it answered"
CLOSED_BEFORE_ANSWER = "connection closed by the endpoint before it answered"
BEFORE_BODY_END = "connection lost before the body of HTTP 200 ended"


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        pytest.param(cut(b"", reset=True), None, RESET_BEFORE_ANSWER, id="reset-before-answer"),
        pytest.param(cut(b"", reset=False), None, CLOSED_BEFORE_ANSWER, id="closed-before-answer"),
        pytest.param(
            cut(b"HTTP/1.1 200 OK\r\nContent-Le", reset=True),
            None,
            RESET_BEFORE_ANSWER,
            id="reset-mid-headers",
        ),
        pytest.param(
            cut(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab", reset=True),
            200,
            BEFORE_BODY_END,
            id="reset-mid-body",
        ),
        pytest.param(
            cut(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe", reset=False),
            200,
            BEFORE_BODY_END,
            id="closed-mid-chunk",
        ),
    ],
)
async def test_a_connection_dropped_mid_answer_is_disconnected(
    tmp_path: Path, answer: Answer, status: int | None, error: str
) -> None:
    async with raw_endpoint(answer) as url:
        row = await one_attempt(tmp_path, url)

    assert (row["status_code"], row["error_kind"], row["error"]) == (status, "disconnected", error)


def garbage(sent: bytes) -> Answer:
    async def answer(
        _r: asyncio.StreamReader, writer: asyncio.StreamWriter, done: asyncio.Event
    ) -> None:
        writer.write(sent)
        await writer.drain()
        await done.wait()

    return answer


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(garbage(b"HELLO THERE\r\n\r\n"), "Bad status line", id="no-status-line"),
        pytest.param(
            garbage(b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n"),
            "Invalid header token",
            id="bad-header-name",
        ),
        pytest.param(
            garbage(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n"),
            "Invalid character in chunk size",
            id="bad-chunk-size",
        ),
    ],
)
async def test_a_malformed_answer_is_an_invalid_response_in_one_line(
    tmp_path: Path, answer: Answer, error: str
) -> None:
    async with raw_endpoint(answer) as url:
        row = await one_attempt(tmp_path, url)

    # aiohttp reports a parse error with its own code 400, which is no answer's status.
    assert (row["status_code"], row["error_kind"]) == (None, "invalid_response")
    assert row["error"] == f"invalid HTTP answer: {error}"


# --- what an answer may carry ----------------------------------------------------------------


async def test_a_huge_body_is_cut_at_the_excerpt_limit_without_being_read(
    tmp_path: Path, receiver: Receiver
) -> None:
    sent = 0
    handler_ended = asyncio.Event()

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Length": str(HUGE_BODY)})
        await response.prepare(request)
        chunk = b"x" * 2**16
        try:
            for _ in range(HUGE_BODY // len(chunk)):
                await response.write(chunk)
                sent += len(chunk)
        finally:
            handler_ended.set()
        return response

    receiver.on("/huge", huge)
    hooks = [webhook("huge", receiver.url("/huge"))]
    config = await prepare(
        write_config(
            tmp_path,
            hooks,
            http={"response_excerpt_bytes": EXCERPT_BYTES},
            retry={"max_retries": 0},
        )
    )
    insert_event(config.database)
    await drain(config)
    await asyncio.wait_for(handler_ended.wait(), 5)

    [row] = attempt_rows(config.database)
    assert (row["status_code"], row["error_kind"]) == (200, None)
    assert row["response_excerpt"] == "x" * EXCERPT_BYTES
    assert row["duration_ms"] < 1000
    # The dispatcher hung up after the excerpt: the server was stopped long before the end,
    # having filled little more than the kernel's socket buffers.
    assert sent < HUGE_BODY // 2


REDIRECTS = (300, 301, 302, 303, 307, 308)


async def test_every_redirect_fails_naming_its_location_and_is_not_followed(
    tmp_path: Path, receiver: Receiver
) -> None:
    for code in REDIRECTS:
        target = receiver.url(f"/target-{code}")
        receiver.on(f"/moved-{code}", answer_with(code, {"Location": target}))
    hooks = [webhook(f"r{code}", receiver.url(f"/moved-{code}")) for code in REDIRECTS]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 0}))
    insert_event(config.database)
    await drain(config)

    rows = {row["webhook"]: row for row in attempt_rows(config.database)}
    for code in REDIRECTS:
        row = rows[f"r{code}"]
        target = receiver.url(f"/target-{code}")
        assert (row["status_code"], row["error_kind"]) == (code, "redirect")
        assert row["error"] == f"redirect not followed: HTTP {code} to {target}"
    assert sorted(c.path for c in receiver.received) == sorted(f"/moved-{c}" for c in REDIRECTS)


# --- Retry-After -----------------------------------------------------------------------------


async def first_waits(
    tmp_path: Path, receiver: Receiver, answers: dict[str, tuple[int, dict[str, str]]], **retry: Any
) -> dict[str, tuple[datetime, datetime]]:
    """Let each webhook's first attempt get its answer, stop the engine before any retry, and
    return each delivery's (first attempt's start, next_attempt_at)."""
    for name, (status, headers) in answers.items():
        receiver.on(f"/{name}", answer_with(status, headers))
    hooks = [webhook(name, receiver.url(f"/{name}")) for name in answers]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 1, **retry}))
    insert_event(config.database)

    # Stopping waits for attempts in flight, so every answer is recorded.
    async with running(config):
        await receiver.wait_for(len(answers))

    rows = query(
        config.database,
        "SELECT d.webhook, d.state, d.attempts, a.started_at, d.next_attempt_at"
        " FROM deliveries AS d JOIN attempts AS a ON a.delivery_id = d.id",
    )
    assert {(name, state, count) for name, state, count, *_ in rows} == {
        (name, "pending", 1) for name in answers
    }
    return {name: (clock.parse_iso(s), clock.parse_iso(n)) for name, _, _, s, n in rows}


async def test_retry_after_in_seconds_or_as_a_date_postpones_the_next_attempt(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Whole seconds, as an HTTP date carries no fraction; at least 2 s from now.
    date = datetime.fromtimestamp(math.ceil(time.time()) + 3, UTC)
    http_date = format_datetime(date, usegmt=True)
    answers = {
        "busy-seconds": (429, {"Retry-After": "2"}),
        "busy-date": (429, {"Retry-After": http_date}),
        "down-seconds": (503, {"Retry-After": "2"}),
        "down-date": (503, {"Retry-After": http_date}),
        "busy-no-header": (429, {}),
    }
    waits = await first_waits(tmp_path, receiver, answers)

    for name in ("busy-seconds", "down-seconds"):
        started, next_at = waits[name]
        assert timedelta(seconds=2) <= next_at - started < timedelta(seconds=3), name
    for name in ("busy-date", "down-date"):
        started, next_at = waits[name]
        assert date <= next_at < date + timedelta(seconds=1), name
    # Without the header the configured backoff (50 ms) applies: the wait came from it.
    started, next_at = waits["busy-no-header"]
    assert next_at - started < timedelta(seconds=1)


async def test_a_huge_retry_after_is_clamped_to_max_retry_after(
    tmp_path: Path, receiver: Receiver
) -> None:
    answers = {
        "seconds": (503, {"Retry-After": "86400"}),
        "date": (429, {"Retry-After": "Fri, 31 Dec 2100 23:59:59 GMT"}),
    }
    waits = await first_waits(tmp_path, receiver, answers, max_retry_after="5s")

    for name, (started, next_at) in waits.items():
        assert timedelta(seconds=5) <= next_at - started < timedelta(seconds=6), name


# --- names and addresses ---------------------------------------------------------------------


async def test_a_host_name_that_does_not_resolve_is_a_dns_error(tmp_path: Path) -> None:
    # The .invalid top-level domain is reserved never to resolve (RFC 6761), and the stub
    # resolver answers for it without asking the network.
    row = await one_attempt(tmp_path, "http://does-not-exist.invalid/hook")

    assert (row["status_code"], row["error_kind"]) == (None, "dns")
    assert row["error"].startswith("cannot resolve 'does-not-exist.invalid': ")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_loopback_is_blocked_unless_allow_listed(
    tmp_path: Path, receiver: Receiver, host: str
) -> None:
    url = f"http://{host}:{receiver.port}/hook"
    hooks = [webhook("local", url)]
    path = write_config(tmp_path, hooks, http={"allow_networks": []}, retry={"max_retries": 0})
    config = await prepare(path)
    insert_event(config.database)
    await drain(config)

    [row] = attempt_rows(config.database)
    assert (row["status_code"], row["error_kind"]) == (None, "blocked_address")
    assert "127.0.0.1 (loopback)" in row["error"]
    assert receiver.received == []


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_an_allow_listed_loopback_endpoint_is_delivered_to(
    tmp_path: Path, receiver: Receiver, host: str
) -> None:
    url = f"http://{host}:{receiver.port}/hook"
    path = write_config(
        tmp_path, [webhook("local", url)], http={"allow_networks": ["127.0.0.1/32"]}
    )
    config = await prepare(path)
    insert_event(config.database)
    await drain(config)

    [row] = attempt_rows(config.database)
    assert (row["status_code"], row["error_kind"]) == (200, None)
    assert len(receiver.received) == 1


# --- isolation -------------------------------------------------------------------------------


async def test_a_healthy_endpoint_is_not_held_up_by_a_hanging_and_a_failing_one(
    tmp_path: Path, receiver: Receiver
) -> None:
    events = 5
    release = asyncio.Event()
    all_healthy = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response()

    async def healthy(request: web.Request) -> web.StreamResponse:
        if len(receiver.at("/healthy")) == events:
            all_healthy.set()
        return web.Response(text="ok")

    receiver.on("/hang", hang)
    receiver.on("/healthy", healthy)
    receiver.on("/fail", answer_with(500))
    hooks = [
        webhook("hanging", receiver.url("/hang"), timeout="2s"),
        webhook("failing", receiver.url("/fail")),
        webhook("healthy", receiver.url("/healthy")),
    ]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 0}))
    for _ in range(events):
        insert_event(config.database)

    draining = asyncio.create_task(drain(config))
    try:
        # Every healthy delivery arrives while the hanging ones are still short of their
        # 2 s timeout.
        await asyncio.wait_for(all_healthy.wait(), 1.5)
    finally:
        # The drain ends by itself once the hanging attempts time out.
        await draining
        release.set()

    outcomes = query(
        config.database,
        "SELECT d.webhook, d.state, a.error_kind, count(*), max(a.duration_ms) FROM deliveries"
        " AS d JOIN attempts AS a ON a.delivery_id = d.id GROUP BY 1, 2, 3 ORDER BY 1",
    )
    summary = {(name, state, kind, count) for name, state, kind, count, _ in outcomes}
    assert summary == {
        ("failing", "failed", "http_status", events),
        ("hanging", "failed", "timeout", events),
        ("healthy", "succeeded", None, events),
    }
    healthy_longest = next(longest for name, *_, longest in outcomes if name == "healthy")
    assert healthy_longest < 500
