"""Shared test parts: a real receiver on 127.0.0.1 and configuration files on disk."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Captured:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def message(self) -> Any:
        return json.loads(self.body)


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200, text="ok")


@dataclass
class Receiver:
    """A real aiohttp server; each path answers 200 unless given another behaviour."""

    port: int = 0
    received: list[Captured] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, behaviour: Behaviour) -> None:
        self.behaviours[path] = behaviour

    def at(self, path: str) -> list[Captured]:
        return [c for c in self.received if c.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Captured(request.path, dict(request.headers), body, time.time()))
        self.arrived.set()
        return await self.behaviours.get(request.path, _ok)(request)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Wait until at least `count` requests arrived, failing after `timeout` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.received) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.received)} requests, wanted {count}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                continue


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


def webhook(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """A webhook entry subscribing to everything unless told otherwise."""
    return {"name": name, "url": url, "events": ["*"], "stores": ["*"], **extra}


def write_config(folder: Path, webhooks: list[dict[str, Any]], **sections: Any) -> Path:
    """A configuration for tests: loopback allowed, plain HTTP allowed, fast retries."""
    document: dict[str, Any] = {
        "database": str(folder / "dispatcher.db"),
        "http": {"timeout": "2s", "allow_http": True, "allow_networks": ["127.0.0.1/32"]},
        "retry": {"max_retries": 3, "backoff": ["50ms", "50ms", "50ms"], "jitter": 0},
        "queue": {"poll_interval": "10ms"},
        "shutdown_grace": "2s",
        "webhooks": webhooks,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def insert_event(
    db: Path, type_: str = "order.created", store_id: str = "store-1", payload: str = "{}"
) -> str:
    """Enqueue the way a producer does: plain SQL, defaults fill id and created_at."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "INSERT INTO events (type, store_id, payload) VALUES (?, ?, ?) RETURNING id",
            (type_, store_id, payload),
        ).fetchone()
    return str(row[0])


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()
