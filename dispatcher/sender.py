"""One HTTP attempt: the request, its limits, and the classification of what came back."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp

from dispatcher import __version__, clock, guard, signing
from dispatcher.config import HttpConfig, WebhookConfig

USER_AGENT = f"webhook-dispatcher/{__version__}"
REDIRECT_CODES = frozenset({300, 301, 302, 303, 304, 305, 307, 308})
RETRY_AFTER_CODES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class AttemptResult:
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error_kind: str | None  # None on success
    error: str | None
    response_excerpt: str | None
    retry_after: float | None  # seconds the receiver asked us to wait

    @property
    def succeeded(self) -> bool:
        return self.error_kind is None


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    excerpt: str
    location: str | None
    retry_after: float | None


class AttemptError(Exception):
    """An attempt failed before a usable answer; `kind` is the recorded error kind."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


def tls_context(http: HttpConfig) -> ssl.SSLContext:
    """Certificates are always verified; `ca_bundle` replaces the system's trust store."""
    cafile = str(http.ca_bundle) if http.ca_bundle else None
    return ssl.create_default_context(cafile=cafile)


class Sender:
    """Owns the one aiohttp session every attempt goes through."""

    def __init__(self, http: HttpConfig) -> None:
        self.http = http
        self._session: aiohttp.ClientSession | None = None
        self._resolver: guard.GuardedResolver | None = None

    async def start(self) -> None:
        # The DNS cache keeps the guard's already-filtered answers for a few seconds; a
        # refusal is never cached, and no proxy is used, so every connection is checked.
        self._resolver = guard.GuardedResolver(self.http.allow_networks)
        connector = aiohttp.TCPConnector(
            # Concurrency is bounded by the engine's semaphores, which are cheaper than the
            # connector's own queue; the connector only pools connections.
            limit=0,
            ssl=tls_context(self.http),
            resolver=self._resolver,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            skip_auto_headers=("Accept-Encoding",),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def send(self, webhook: WebhookConfig, event_id: str, body: bytes) -> AttemptResult:
        """Make one attempt. Never raises for anything the endpoint or network does."""
        started = clock.now()
        t0 = time.perf_counter()
        try:
            answer = await self._post(webhook, event_id, body, started)
        except AttemptError as exc:
            return _result(started, t0, exc.status, exc.kind, str(exc), None, None)
        kind, error = _judge(answer)
        return _result(
            started, t0, answer.status, kind, error, answer.excerpt, answer.retry_after
        )

    async def _post(
        self, webhook: WebhookConfig, event_id: str, body: bytes, started: datetime
    ) -> _Answer:
        assert self._session is not None, "Sender.start() was not awaited"
        host = urlsplit(webhook.url).hostname or ""
        refused = guard.check_literal_host(host, self.http.allow_networks)
        if refused:
            raise AttemptError("blocked_address", refused)
        headers = _headers(webhook, event_id, body, started)
        timeout = aiohttp.ClientTimeout(
            total=webhook.timeout, sock_connect=webhook.connect_timeout
        )
        try:
            # The outer timeout bounds the whole attempt, reading included, so an endpoint
            # that answers one byte a second cannot hold a worker past `timeout`.
            async with asyncio.timeout(webhook.timeout):
                return await self._exchange(webhook.url, body, headers, timeout)
        except AttemptError:
            raise
        except Exception as exc:
            raise _classify(exc, host, webhook) from exc

    async def _exchange(
        self, url: str, body: bytes, headers: dict[str, str], timeout: aiohttp.ClientTimeout
    ) -> _Answer:
        assert self._session is not None
        async with self._session.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            try:
                excerpt = await _read_excerpt(response, self.http.response_excerpt_bytes)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _classify(exc, "", None, status=response.status) from exc
            return _Answer(
                status=response.status,
                excerpt=excerpt,
                location=response.headers.get("Location"),
                retry_after=_retry_after(response),
            )


def _headers(
    webhook: WebhookConfig, event_id: str, body: bytes, started: datetime
) -> dict[str, str]:
    timestamp = int(started.timestamp())
    headers = dict(webhook.headers)
    headers["Content-Type"] = "application/json"
    headers["User-Agent"] = USER_AGENT
    headers["webhook-id"] = event_id
    headers["webhook-timestamp"] = str(timestamp)
    signature = signing.sign(webhook.secrets, event_id, timestamp, body, started)
    if signature is not None:
        headers["webhook-signature"] = signature
    return headers


async def _read_excerpt(response: aiohttp.ClientResponse, limit: int) -> str:
    """Read at most `limit` bytes of the body; a longer body is cut off, not drained, so a
    huge answer costs neither memory nor time."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    if not response.content.at_eof():
        response.close()
    return b"".join(chunks).decode("utf-8", errors="replace")


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    if response.status not in RETRY_AFTER_CODES:
        return None
    return parse_retry_after(response.headers.get("Retry-After"), clock.now())


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from `now`: delay-seconds or an HTTP date; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _judge(answer: _Answer) -> tuple[str | None, str | None]:
    if 200 <= answer.status < 300:
        return None, None
    if answer.status in REDIRECT_CODES:
        target = answer.location or "no Location header"
        return "redirect", f"redirect not followed: HTTP {answer.status} to {target}"
    return "http_status", f"HTTP {answer.status}"


def _classify(
    exc: Exception, host: str, webhook: WebhookConfig | None, status: int | None = None
) -> AttemptError:
    """Map what aiohttp raised onto one recorded error kind and a readable message."""
    blocked = guard.find_blocked(exc)
    if blocked is not None:
        return AttemptError("blocked_address", str(blocked), status)
    if isinstance(exc, aiohttp.ConnectionTimeoutError) and webhook is not None:
        return AttemptError(
            "timeout", f"connect timed out after {webhook.connect_timeout:g}s", status
        )
    if isinstance(exc, TimeoutError):
        limit = f" after {webhook.timeout:g}s" if webhook is not None else ""
        return AttemptError("timeout", f"timed out{limit}", status)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return AttemptError("tls", f"TLS error: {_reason(exc)}", status)
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or _is_dns(exc):
        return AttemptError("dns", f"cannot resolve {host!r}: {_reason(exc)}", status)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return AttemptError("connect", f"cannot connect: {_reason(exc)}", status)
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return AttemptError("disconnected", "connection closed before the answer ended", status)
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return AttemptError("invalid_response", f"invalid HTTP answer: {_reason(exc)}", status)
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return AttemptError("connect", f"connection error: {_reason(exc)}", status)
    return AttemptError("other", f"{type(exc).__name__}: {_reason(exc)}", status)


def _is_dns(exc: BaseException) -> bool:
    return isinstance(getattr(exc, "os_error", None), socket.gaierror) or isinstance(
        exc.__cause__, socket.gaierror
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _result(
    started: datetime,
    t0: float,
    status: int | None,
    kind: str | None,
    error: str | None,
    excerpt: str | None,
    retry_after: float | None,
) -> AttemptResult:
    duration = (time.perf_counter() - t0) * 1000.0
    return AttemptResult(started, round(duration, 3), status, kind, error, excerpt, retry_after)
