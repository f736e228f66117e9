"""The yardstick: the plainest fast aiohttp client sending the daemon's messages.

One session, a fixed set of long-lived sender coroutines each taking every k-th message,
no queue, no database, no bookkeeping beyond a failure count. Whatever the daemon adds on
top of this (reading the queue, claiming, recording) shows as the distance to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp

from dispatcher import service, signing
from dispatcher.config import Secret
from dispatcher.sender import USER_AGENT


async def _send_all(
    url: str, messages: Sequence[tuple[str, bytes]], secret: Secret, concurrency: int
) -> tuple[float, int]:
    """Send every message once; returns (seconds from first request to last answer,
    failures)."""
    failures = 0
    secrets = (secret,)
    # The secret never expires, so one `now` serves every signature's expiry check.
    now = datetime.now(UTC)

    async def sender(session: aiohttp.ClientSession, first: int) -> None:
        nonlocal failures
        for index in range(first, len(messages), concurrency):
            event_id, body = messages[index]
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "webhook-id": event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signing.sign(secrets, event_id, timestamp, body, now) or "",
            }
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    failures += 1

    # limit=0: the coroutines already bound concurrency, the connector's own queue would
    # only add work; the rest mirrors the daemon's session so requests look the same.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, skip_auto_headers=("Accept-Encoding",), auto_decompress=False
    ) as session:
        started = time.perf_counter()
        await asyncio.gather(*(sender(session, k) for k in range(concurrency)))
        return time.perf_counter() - started, failures


def send_all(
    url: str, messages: Sequence[tuple[str, bytes]], secret: Secret, concurrency: int
) -> tuple[float, int]:
    _, factory = service.loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_send_all(url, messages, secret, concurrency))
