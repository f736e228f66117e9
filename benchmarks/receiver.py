"""The webhook receiver the benchmarks send to, run in its own process.

    python -m benchmarks.receiver [--max-seconds N]

It prints `PORT <number>` on stdout once it listens on 127.0.0.1, then serves until
SIGTERM or `--max-seconds`. Every POST gets 200 unless its path asks otherwise:

    /slow/<ms>   answers 200 after <ms> milliseconds
    /hang        answers only when the client gives up (or after HANG_SECONDS)
    /fail        answers 500 at once

`GET /stats` returns per path the request count and the first and last arrival times
(unix seconds); `GET /arrivals` maps each `webhook-id` to its first arrival; `POST /reset`
clears both. The handler does as little as possible so that the receiver, which shares
the machine with the sender under test, stays the cheaper side of every exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web

HANG_SECONDS = 300.0
DEFAULT_MAX_SECONDS = 3600.0


@dataclass(slots=True)
class PathStats:
    count: int = 0
    first: float = 0.0
    last: float = 0.0


@dataclass(slots=True)
class Tally:
    """What the receiver has seen since the last reset."""

    paths: dict[str, PathStats] = field(default_factory=dict)
    # Only the first arrival counts for latency: a retry or a second webhook receiving the
    # same event says nothing about how fast the event got out.
    arrivals: dict[str, float] = field(default_factory=dict)

    def note(self, path: str, event_id: str | None, at: float) -> None:
        stats = self.paths.get(path)
        if stats is None:
            stats = self.paths[path] = PathStats(first=at)
        stats.count += 1
        stats.last = at
        if event_id is not None and event_id not in self.arrivals:
            self.arrivals[event_id] = at


def build_app(tally: Tally) -> web.Application:
    async def receive(request: web.Request) -> web.StreamResponse:
        path = request.path
        tally.note(path, request.headers.get("webhook-id"), time.time())
        if path == "/fail":
            return web.Response(status=500, text="failing on purpose")
        if path == "/hang":
            await asyncio.sleep(HANG_SECONDS)
        elif path.startswith("/slow/"):
            await asyncio.sleep(_millis(path.removeprefix("/slow/")) / 1000.0)
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.StreamResponse:
        body = {
            path: {"count": s.count, "first": s.first, "last": s.last}
            for path, s in tally.paths.items()
        }
        total = sum(s.count for s in tally.paths.values())
        return web.json_response({"paths": body, "total": total})

    async def arrivals(request: web.Request) -> web.StreamResponse:
        return web.json_response(tally.arrivals)

    async def reset(request: web.Request) -> web.StreamResponse:
        tally.paths.clear()
        tally.arrivals.clear()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/arrivals", arrivals)
    app.router.add_post("/reset", reset)
    app.router.add_post("/{tail:.*}", receive)
    return app


def _millis(text: str) -> float:
    try:
        return max(0.0, min(float(text), HANG_SECONDS * 1000.0))
    except ValueError:
        return 0.0


async def serve(max_seconds: float) -> None:
    # handler_cancellation: a client that gives up on /hang frees its handler at once
    # instead of leaving a sleeping task behind for every timed-out attempt.
    runner = web.AppRunner(build_app(Tally()), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    args = parser.parse_args()
    asyncio.run(serve(args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
