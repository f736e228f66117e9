"""The one clock the dispatcher reads, and the timestamp format it writes.

Tests replace `now` to move time; timestamps are ISO 8601 UTC text with milliseconds, the
same shape SQLite's `strftime('%Y-%m-%dT%H:%M:%fZ')` produces, so they compare as text.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """`moment` as sortable ISO 8601 UTC text: 2026-12-03T16:13:07.123Z."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_iso(text: str) -> datetime:
    """Read a timestamp written by `iso` or by SQLite's defaults; one without a zone is
    UTC, as every timestamp in the database is."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def later(moment: datetime, seconds: float) -> datetime:
    return moment + timedelta(seconds=seconds)
