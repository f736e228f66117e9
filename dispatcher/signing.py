"""Standard Webhooks signatures: the `webhook-signature` header and the `whsec_` secret form."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets as random_source
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for annotations: config.py reads secrets through decode_secret below, so a
    # runtime import here would be circular.
    from dispatcher.config import Secret

# The marker of the serialised form the specification names, not a credential.
SECRET_PREFIX = "whsec_"  # noqa: S105

# The specification asks for at least 192 bits of key and allows up to 512.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64

_VALID_SECRET = (
    f"valid: '{SECRET_PREFIX}' followed by standard base64 (A-Z a-z 0-9 + /) "
    f"of {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"
)


def sign(
    secrets: Sequence[Secret], msg_id: str, timestamp: int, body: bytes, now: datetime
) -> str | None:
    """The `webhook-signature` value: one `v1,<base64>` per secret still valid at `now`.

    Returns None when no secret is valid, so the caller sends no signature header. `now`
    must be timezone-aware like `Secret.expires_at`. Raises ValueError for a `msg_id`
    holding a full stop.
    """
    if "." in msg_id:
        # The id, timestamp and body are joined with full stops before signing; a full stop
        # inside the id would let one signed string be read as a different id and body.
        raise ValueError("a message id to sign must not contain '.'")

    active = [secret.key for secret in secrets if is_active(secret, now)]
    if not active:
        return None

    # Built once and shared by every secret: the body may be hundreds of kilobytes.
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(_signature(key, content) for key in active)


def is_active(secret: Secret, now: datetime) -> bool:
    """Whether `secret` still signs at `now`; it stops at the instant it expires."""
    return secret.expires_at is None or now < secret.expires_at


def _signature(key: bytes, content: bytes) -> str:
    # The one-shot digest skips building an HMAC object and is the fastest path in the stdlib.
    digest = hmac.digest(key, content, "sha256")
    return "v1," + base64.b64encode(digest).decode("ascii")


def generate_secret(nbytes: int = 32) -> str:
    """A new random secret in the `whsec_` form that receivers paste into their verifier."""
    if not MIN_SECRET_BYTES <= nbytes <= MAX_SECRET_BYTES:
        raise ValueError(
            f"a secret must have {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {nbytes}"
        )
    return SECRET_PREFIX + base64.b64encode(random_source.token_bytes(nbytes)).decode("ascii")


def decode_secret(text: str) -> bytes:
    """The HMAC key inside a `whsec_` secret; ValueError when the text is not one.

    Error messages describe the problem and never quote the text: it is a credential and
    the message may reach a log or the terminal.
    """
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"secret does not start with '{SECRET_PREFIX}' ({_VALID_SECRET})")

    encoded = text.removeprefix(SECRET_PREFIX)
    # Other implementations accept the base64 without its trailing '=' padding; so do we.
    padded = encoded + "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(padded, validate=True)
    except binascii.Error:
        # `from None`: the decoder's own error is dropped so nothing derived from the
        # secret's text travels with the exception.
        raise ValueError(f"secret is not standard base64 ({_VALID_SECRET})") from None

    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"secret decodes to {len(key)} bytes ({_VALID_SECRET})")
    return key
