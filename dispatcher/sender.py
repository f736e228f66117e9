"""One HTTP attempt: the request, its limits, and the classification of what came back."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp.http_exceptions import ContentLengthError, TransferEncodingError

from dispatcher import __version__, clock, guard, signing
from dispatcher.config import HttpConfig, WebhookConfig

USER_AGENT = f"webhook-dispatcher/{__version__}"
RETRY_AFTER_CODES = frozenset({429, 503})
REDACTED = "[redacted]"
MIN_HIDDEN_VALUE = 8  # characters; see _hidden_values

_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)")

E = TypeVar("E", bound=BaseException)


# Plain (not frozen) slotted classes: one of each is made per attempt, and a frozen
# dataclass's __init__ costs several times as much.
@dataclass(slots=True)
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


@dataclass(slots=True)
class _Answer:
    status: int
    excerpt: str
    location: str | None
    retry_after: float | None


@dataclass(slots=True)
class _Prepared:
    """What every attempt to one webhook shares, worked out once."""

    refused: str | None  # why the URL's literal address is refused, if it is
    timeout: aiohttp.ClientTimeout
    headers: dict[str, str]
    hidden: tuple[str, ...]


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
        self._prepared: dict[str, _Prepared] = {}

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

    def _prepare(self, webhook: WebhookConfig) -> _Prepared:
        prepared = self._prepared.get(webhook.name)
        if prepared is None:
            host = urlsplit(webhook.url).hostname or ""
            headers = dict(webhook.headers)
            headers["Content-Type"] = "application/json"
            headers["User-Agent"] = USER_AGENT
            prepared = _Prepared(
                refused=guard.check_literal_host(host, self.http.allow_networks),
                # The whole-attempt limit is the asyncio timeout in _post; aiohttp's own
                # `total` would be a second timer per attempt and rounds up to seconds.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=webhook.connect_timeout),
                headers=headers,
                hidden=_hidden_values(webhook),
            )
            self._prepared[webhook.name] = prepared
        return prepared

    async def send(self, webhook: WebhookConfig, event_id: str, body: bytes) -> AttemptResult:
        """Make one attempt. Never raises for anything the endpoint or network does."""
        started = clock.now()
        t0 = time.perf_counter()
        prepared = self._prepare(webhook)
        try:
            answer = await self._post(webhook, prepared, event_id, body, started)
        except AttemptError as exc:
            # An error's text may quote the answer (a Location, a parser's complaint), and
            # the answer may echo a request header.
            error = _hide(str(exc), prepared.hidden)
            return AttemptResult(started, _elapsed_ms(t0), exc.status, exc.kind, error, None, None)

        kind, judged = _judge(answer)
        return AttemptResult(
            started,
            _elapsed_ms(t0),
            answer.status,
            kind,
            None if judged is None else _hide(judged, prepared.hidden),
            answer.excerpt,
            answer.retry_after,
        )

    async def _post(
        self,
        webhook: WebhookConfig,
        prepared: _Prepared,
        event_id: str,
        body: bytes,
        started: datetime,
    ) -> _Answer:
        if self._session is None:
            raise RuntimeError("Sender.start() was not awaited")
        if prepared.refused:
            raise AttemptError("blocked_address", prepared.refused)

        headers = _headers(prepared.headers, webhook, event_id, body, started)
        # Set once the status line and headers have arrived, so that a failure while reading
        # the body is recorded with the status the endpoint had already given.
        status: int | None = None
        try:
            # One timeout bounds the whole attempt, reading included, so an endpoint that
            # answers one byte a second cannot hold a worker past `timeout`.
            async with (
                asyncio.timeout(webhook.timeout),
                self._session.post(
                    webhook.url,
                    data=body,
                    headers=headers,
                    timeout=prepared.timeout,
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
                limit = self.http.response_excerpt_bytes
                return _Answer(
                    status=status,
                    excerpt=await _read_excerpt(response, limit, prepared.hidden),
                    location=response.headers.get("Location"),
                    retry_after=_retry_after(response),
                )
        except Exception as exc:
            raise _classify(exc, webhook, status) from exc


def _headers(
    base: dict[str, str], webhook: WebhookConfig, event_id: str, body: bytes, started: datetime
) -> dict[str, str]:
    timestamp = int(started.timestamp())
    headers = base.copy()
    headers["webhook-id"] = event_id
    headers["webhook-timestamp"] = str(timestamp)
    signature = signing.sign(webhook.secrets, event_id, timestamp, body, started)
    if signature is not None:
        headers["webhook-signature"] = signature
    return headers


async def _read_excerpt(
    response: aiohttp.ClientResponse, limit: int, hidden: tuple[str, ...]
) -> str:
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

    excerpt = b"".join(chunks).decode("utf-8", errors="replace")
    if response.content.at_eof():
        return _hide(excerpt, hidden)
    # Closed rather than released: a connection with unread body cannot be reused.
    response.close()
    return _hide_cut(excerpt, hidden)


def _hidden_values(webhook: WebhookConfig) -> tuple[str, ...]:
    """The configured header values, and each word of them, that must not reach the database
    through an answer.

    A receiver that echoes the request (a debugging endpoint, an error page quoting the
    Authorization header or just its token) would otherwise put a credential into
    `response_excerpt`. Anything shorter than MIN_HIDDEN_VALUE is too short to be a
    credential, and hiding it would only blank out ordinary words of the answer.
    """
    values = {part for _, value in webhook.headers for part in (value, *value.split())}
    kept = [value for value in values if len(value) >= MIN_HIDDEN_VALUE]
    # Longest first, so that a value holding another one is replaced whole.
    return tuple(sorted(kept, key=len, reverse=True))


def _hide(text: str, hidden: tuple[str, ...]) -> str:
    for value in hidden:
        text = text.replace(value, REDACTED)
    return text


def _hide_cut(excerpt: str, hidden: tuple[str, ...]) -> str:
    """`_hide` for an excerpt cut off at the limit, whose end may hold the first part of a
    hidden value: that part alone can be most of a token."""
    excerpt = _hide(excerpt, hidden)
    for value in hidden:
        for length in range(min(len(value) - 1, len(excerpt)), 0, -1):
            if excerpt.endswith(value[:length]):
                return excerpt[:-length] + REDACTED
    return excerpt


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
    if 300 <= answer.status < 400:
        target = answer.location or "no Location header"
        return "redirect", f"redirect not followed: HTTP {answer.status} to {target}"
    return "http_status", f"HTTP {answer.status}"


def _classify(exc: Exception, webhook: WebhookConfig, status: int | None) -> AttemptError:
    """Map what aiohttp raised onto one recorded error kind and a readable message.

    The order matters: aiohttp's classes overlap (a certificate error is also a connector
    error, a timeout is also an OSError), so the most specific cause is asked first.
    """
    blocked = guard.find_blocked(exc)
    if blocked is not None:
        return AttemptError("blocked_address", str(blocked), status)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        limit = webhook.connect_timeout
        return AttemptError("timeout", f"connect timed out after {limit:g}s", status)
    if isinstance(exc, TimeoutError):
        return AttemptError("timeout", _timeout_message(webhook.timeout, status), status)
    tls = _tls_message(exc)
    if tls is not None:
        return AttemptError("tls", tls, status)
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or _is_dns(exc):
        host = urlsplit(webhook.url).hostname or ""
        return AttemptError("dns", f"cannot resolve {host!r}: {_os_reason(exc)}", status)
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = f"{exc.host}:{exc.port}"
        return AttemptError("connect", f"cannot connect to {where}: {_os_reason(exc)}", status)
    if _is_disconnect(exc):
        return AttemptError("disconnected", _disconnect_message(exc, status), status)
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return AttemptError("invalid_response", f"invalid HTTP answer: {_reason(exc)}", status)
    return AttemptError("other", f"{type(exc).__name__}: {_reason(exc)}", status)


def _timeout_message(limit: float, status: int | None) -> str:
    if status is None:
        return f"timed out after {limit:g}s waiting for the answer"
    return f"timed out after {limit:g}s reading the body of HTTP {status}"


def _tls_message(exc: Exception) -> str | None:
    """A message when a TLS handshake or certificate check failed, else None."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        why = getattr(cert_error, "verify_message", None) or _reason(cert_error)
        return f"certificate of {exc.host}:{exc.port} refused: {why}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS handshake with {exc.host}:{exc.port} failed: {_ssl_reason(exc.os_error)}"
    ssl_error = _cause_of_type(exc, ssl.SSLError)
    if ssl_error is not None:
        # TLS broke after the handshake (a bad record, an alert from the peer).
        return f"TLS error: {_ssl_reason(ssl_error)}"
    return None


def _ssl_reason(error: BaseException) -> str:
    # OpenSSL's text ends with the C source line that raised it, which helps nobody here.
    return _SSL_SOURCE.sub("", _reason(error))


def _is_dns(exc: BaseException) -> bool:
    return _cause_of_type(exc, socket.gaierror) is not None


def _is_disconnect(exc: Exception) -> bool:
    """Whether the connection broke after it was made: closed, reset, or cut mid-body."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return _is_cut_short(exc)
    # Connector errors were sorted out before this is asked, so any connection or socket
    # error left happened on an established connection.
    return isinstance(exc, aiohttp.ClientConnectionError | OSError)


def _is_cut_short(exc: aiohttp.ClientPayloadError) -> bool:
    # aiohttp raises ClientPayloadError both for a body that ended before its length (the
    # connection closed) and for a malformed one; only the first is a disconnection. The
    # Content-Length case is told by its cause; a chunked body cut short only by aiohttp's
    # wording, which the tests pin.
    if isinstance(exc.__cause__, ContentLengthError):
        return True
    return isinstance(exc.__cause__, TransferEncodingError) and "not completed" in str(exc)


def _disconnect_message(exc: Exception, status: int | None) -> str:
    number = exc.errno if isinstance(exc, OSError) else None
    if number == errno.EPIPE:
        return "connection closed by the endpoint while the request was being sent"
    if status is not None:
        # aiohttp reports a body cut short the same way for a close and for a reset.
        return f"connection lost before the body of HTTP {status} ended"
    reset = number == errno.ECONNRESET or isinstance(exc, ConnectionResetError)
    return f"connection {'reset' if reset else 'closed'} by the endpoint before it answered"


def _cause_of_type(exc: BaseException, kind: type[E]) -> E | None:
    """`exc` or the first exception in its chain of causes that is a `kind`."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__
    return None


def _os_reason(exc: Exception) -> str:
    """The operating system's words for a failed connect or lookup."""
    error = getattr(exc, "os_error", None) or exc
    number = getattr(error, "errno", None)
    if isinstance(number, int) and number > 0:
        # asyncio words a refusal as "Connect call failed (address)"; the errno says why.
        return os.strerror(number)
    # getaddrinfo's errors have negative numbers, which os.strerror does not know.
    words = getattr(error, "strerror", None)
    return words if isinstance(words, str) and words else _reason(error)


def _reason(exc: BaseException) -> str:
    """The first line of `exc`'s text: errors are stored in a table and shown one per row,
    and the lines after the first of aiohttp's parser errors quote the answer's bytes."""
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    lines = text.strip().splitlines()
    first = lines[0].strip().rstrip(":") if lines else ""
    return first or type(exc).__name__


def _elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
