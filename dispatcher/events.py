"""The event catalogue, the message envelope and subscription matching."""

from __future__ import annotations

import json
import json.encoder
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

EVENT_TYPES: tuple[str, ...] = (
    "product.created",
    "product.updated",
    "product.deleted",
    "order.created",
    "order.confirmed",
    "order.updated",
    "order.cancelled",
    "order.closed",
    "order.out_for_delivery",
    "order.ready_for_pickup",
    "order.delivered",
    "order.shipped",
)

ALL_STORES = "*"
_quote = json.encoder.encode_basestring
_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def expand_event_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """Turn `order.*` style wildcards into the concrete event types, keeping catalogue order.

    An unknown pattern matches nothing; config validation reports it before this runs.
    """
    wanted: set[str] = set()
    for pattern in patterns:
        if pattern == "*":
            wanted.update(EVENT_TYPES)
        elif pattern.endswith(".*"):
            prefix = pattern[:-1]
            wanted.update(t for t in EVENT_TYPES if t.startswith(prefix))
        elif pattern in EVENT_TYPES:
            wanted.add(pattern)
    return tuple(t for t in EVENT_TYPES if t in wanted)


def is_known_pattern(pattern: str) -> bool:
    """Whether `pattern` names a catalogue type or a wildcard that matches at least one."""
    return bool(expand_event_patterns([pattern]))


def subscribes(events: frozenset[str], stores: frozenset[str], type_: str, store_id: str) -> bool:
    """Whether a webhook with these event types and stores wants this event."""
    return type_ in events and (ALL_STORES in stores or store_id in stores)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"payload holds {name}, which strict JSON does not allow")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"payload holds the number {text[:40]}, too large for a double")
    return value


def parse_payload(text: str) -> dict[str, Any]:
    """Parse a queue row's payload strictly: a JSON object, without NaN or Infinity."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("payload is nested too deeply") from exc
    if not isinstance(value, dict):
        raise ValueError(f"payload is a JSON {type(value).__name__}, not an object")
    return value


def check_event_id(event_id: object) -> str:
    """An event id usable as the `webhook-id` header and in a signature, or ValueError."""
    if not isinstance(event_id, str):
        raise ValueError("event id is a BLOB or not UTF-8 text")
    if not event_id.strip() or not event_id.isprintable() or not event_id.isascii():
        raise ValueError(f"event id {event_id!r} must be non-blank printable ASCII")
    if "." in event_id:
        # The id is signed as `{id}.{timestamp}.{body}`; a dot would make that ambiguous.
        raise ValueError(f"event id {event_id!r} contains '.', which signed ids must not")
    return event_id


def check_event(
    row: tuple[object, object, object, object, object], max_payload_bytes: int
) -> tuple[str, bytes]:
    """Check a queue row (id, type, store_id, payload, created_at) as a producer wrote it.

    Returns the event type and its message body; raises ValueError with the reason the
    row cannot be delivered. Values that are not `str` were BLOBs or invalid UTF-8.
    """
    event_id, type_, store_id, payload, created_at = row
    check_event_id(event_id)
    if not isinstance(type_, str) or type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    if not isinstance(store_id, str) or not store_id.strip():
        raise ValueError(f"store_id must be non-empty text, got {store_id!r}")
    if not isinstance(payload, str):
        raise ValueError("payload is a BLOB or not UTF-8 text, not JSON text")
    size = len(payload.encode("utf-8", errors="surrogatepass"))
    if size > max_payload_bytes:
        raise ValueError(f"payload is {size} bytes, over the limit of {max_payload_bytes}")
    try:
        parse_payload(payload)
    except ValueError as exc:
        raise ValueError(f"payload is not a JSON object: {exc}") from exc
    timestamp = _timestamp(created_at)
    return type_, envelope(str(event_id), type_, timestamp, store_id, payload)


def _timestamp(created_at: object) -> str:
    """The envelope's RFC 3339 UTC timestamp from the row's created_at."""
    if isinstance(created_at, str) and _CANONICAL_TIME.fullmatch(created_at):
        return created_at  # the column default's own form, the common case
    try:
        moment = datetime.fromisoformat(str(created_at).replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"created_at {created_at!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def envelope(event_id: str, type_: str, timestamp: str, store_id: str, payload: str) -> bytes:
    """The message body for one event, serialised once and sent to every webhook as is.

    `payload` must have passed `parse_payload`. It is embedded as the producer wrote it, so
    numbers keep their digits (19.90 stays 19.90) and keys their order, and no time is
    spent writing the JSON again. Raises ValueError when the text cannot be UTF-8.
    """
    # The four strings are quoted with json's own C string encoder: json.dumps on a dict
    # costs several times as much, once per event.
    text = (
        f'{{"id":{_quote(event_id)},"type":{_quote(type_)},"timestamp":{_quote(timestamp)},'
        f'"store_id":{_quote(store_id)},"data":{payload.strip()}}}'
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"payload is not valid UTF-8 text: {exc.reason}") from exc
