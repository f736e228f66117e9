"""Fan-out: which webhooks get which queued event, and the message bodies, built once.

The planning is pure: the engine hands it a batch of queue rows inside the fan-out
transaction and writes back the deliveries, dispatched rows and rejections it returns.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from dispatcher import events
from dispatcher.config import WebhookConfig
from dispatcher.store import EventRow, FanOutPlan, QueuedEvent

BODY_CACHE_SIZE = 20_000


@dataclass(slots=True)
class Message:
    """An event as every webhook receives it."""

    type: str
    body: bytes


class Bodies:
    """Message bodies by event id, so each event is serialised once however many webhooks
    receive it and however often it is retried. Bounded: the oldest go first."""

    def __init__(self, size: int = BODY_CACHE_SIZE) -> None:
        self._size = size
        self._messages: dict[str, Message] = {}

    def get(self, event_id: str) -> Message | None:
        return self._messages.get(event_id)

    def missing(self, event_ids: Sequence[str]) -> set[str]:
        return {event_id for event_id in event_ids if event_id not in self._messages}

    def remember(self, event_id: str, message: Message) -> None:
        self._messages[event_id] = message
        if len(self._messages) > self._size:
            # Dicts keep insertion order, and the oldest events are the ones whose
            # deliveries have most likely been sent already.
            del self._messages[next(iter(self._messages))]

    def load(self, rows: Sequence[EventRow]) -> None:
        """Rebuild bodies of events read back from the database (after a restart, or once
        evicted). They passed the checks at fan-out; the size limit may have changed."""
        for row in rows:
            fields = (row.id, row.type, row.store_id, row.payload, row.created_at)
            with contextlib.suppress(ValueError):
                type_, body = events.check_event(fields, sys.maxsize)
                self.remember(row.id, Message(type_, body))


def plan(
    queued: Sequence[QueuedEvent],
    webhooks: Sequence[WebhookConfig],
    max_payload_bytes: int,
    bodies: Bodies,
) -> FanOutPlan:
    """Check each queued row and match it to the webhooks that subscribe to it."""
    decided = FanOutPlan(deliveries=[], dispatched=[], rejected=[])
    for event in queued:
        try:
            type_, body = events.check_event(
                (event.id, event.type, event.store_id, event.payload, event.created_at),
                max_payload_bytes,
            )
        except ValueError as exc:
            decided.rejected.append((str(exc), event.seq))
            continue
        event_id, store_id = str(event.id), str(event.store_id)
        decided.dispatched.append(event.seq)
        matched = [
            w.name for w in webhooks if events.subscribes(w.events, w.stores, type_, store_id)
        ]
        decided.deliveries.extend((event_id, name) for name in matched)
        if matched:
            bodies.remember(event_id, Message(type_, body))
    return decided
