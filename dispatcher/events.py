"""The event catalogue, the message envelope and subscription matching."""

from __future__ import annotations

import json
from collections.abc import Iterable
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


def parse_payload(text: str) -> dict[str, Any]:
    """Parse a queue row's payload strictly: a JSON object, without NaN or Infinity."""
    value = json.loads(text, parse_constant=_refuse_constant)
    if not isinstance(value, dict):
        raise ValueError(f"payload is a JSON {type(value).__name__}, not an object")
    return value


def envelope(
    event_id: str, type_: str, created_at: str, store_id: str, data: dict[str, Any]
) -> bytes:
    """The message body for one event, serialised once and sent to every webhook as is.

    Raises ValueError when `data` cannot be written as strict UTF-8 JSON (a lone surrogate
    in a string, say); the caller rejects such an event.
    """
    message = {
        "id": event_id,
        "type": type_,
        "timestamp": created_at,
        "store_id": store_id,
        "data": data,
    }
    text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"payload is not valid UTF-8 text: {exc.reason}") from exc
