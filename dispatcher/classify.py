"""What went wrong with an attempt: aiohttp's and the operating system's errors mapped onto
one recorded error kind and a one-line message an operator can act on.

aiohttp's error classes also inherit the standard library's (asyncio.TimeoutError,
OSError), so most of the mapping reads the exception's type and the errno behind it.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
from urllib.parse import urlsplit

import aiohttp
from aiohttp.http_exceptions import ContentLengthError, TransferEncodingError

from dispatcher import guard
from dispatcher.config import WebhookConfig
from dispatcher.errors import cause_of_type

_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)")


class AttemptError(Exception):
    """An attempt failed before a usable answer; `kind` is the recorded error kind."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


def classify(exc: Exception, webhook: WebhookConfig, status: int | None) -> AttemptError:
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
    ssl_error = cause_of_type(exc, ssl.SSLError)
    if ssl_error is not None:
        # TLS broke after the handshake (a bad record, an alert from the peer).
        return f"TLS error: {_ssl_reason(ssl_error)}"
    return None


def _ssl_reason(error: BaseException) -> str:
    # OpenSSL's text ends with the C source line that raised it, which helps nobody here.
    return _SSL_SOURCE.sub("", _reason(error))


def _is_dns(exc: BaseException) -> bool:
    return cause_of_type(exc, socket.gaierror) is not None


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
