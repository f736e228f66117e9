"""One HTTP attempt: the request, its limits, and the classification of what came back."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp

from dispatcher import __version__, clock, guard, signing
from dispatcher.classify import AttemptError, classify
from dispatcher.config import HttpConfig, WebhookConfig

USER_AGENT = f"webhook-dispatcher/{__version__}"
RETRY_AFTER_CODES = frozenset({429, 503})
REDACTED = "[redacted]"
MIN_HIDDEN_VALUE = 8  # characters; see _hidden_values


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
            raise classify(exc, webhook, status) from exc


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


def _elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
