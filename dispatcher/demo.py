"""`webhook-dispatcher demo`: the whole path on one machine in a few seconds.

Starts a receiver on 127.0.0.1 with one endpoint that accepts, one that fails twice per
event and then accepts, and one that always fails; writes a configuration for them;
enqueues one event of every type; runs the daemon until every delivery is finished;
prints the event log.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from aiohttp import web

from dispatcher import admin, events, logs, service, signing, tables
from dispatcher.config import load_config

CONFIG = """\
# Written by `webhook-dispatcher demo`; every key is explained in config.example.yaml.
database: {database}
http:
  timeout: 2s
  allow_http: true                 # the demo receiver speaks plain HTTP on loopback
  allow_networks: [127.0.0.1/32]   # opens loopback in the private-address guard
retry:
  max_retries: 3
  backoff: [200ms, 400ms, 800ms]   # short, so the demo shows retries in seconds
queue:
  poll_interval: 20ms
logging:
  level: error                     # only give-ups; `warning` also shows every failed attempt
webhooks:
  - name: erp-sync
    url: http://127.0.0.1:{port}/ok
    events: ["*"]
    stores: [store-1, store-2]
    secret: {secret}
  - name: crm-orders
    url: http://127.0.0.1:{port}/flaky
    events: [order.*]
    stores: ["*"]
  - name: broken-endpoint
    url: http://127.0.0.1:{port}/down
    events: [product.created, order.created]
    stores: [store-1]
"""


class DemoReceiver:
    """The retailers' side: counts what arrives at each path."""

    def __init__(self) -> None:
        self.received: dict[str, int] = {}
        self.tries: dict[str, int] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.received[path] = self.received.get(path, 0) + 1
        await request.read()
        if path == "/down":
            return web.Response(status=503, text="maintenance")
        if path == "/flaky":
            # Fails the first two attempts of every event, so each of its deliveries shows
            # two retries before succeeding on the third attempt.
            key = request.headers.get("webhook-id", "")
            self.tries[key] = self.tries.get(key, 0) + 1
            if self.tries[key] <= 2:
                return web.Response(status=500, text="temporary failure")
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def main(directory: Path | None) -> int:
    folder = directory or Path(tempfile.mkdtemp(prefix="webhook-dispatcher-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    receiver = DemoReceiver()
    await receiver.start()
    try:
        config_path = folder / "demo.yaml"
        config_path.write_text(
            CONFIG.format(
                database=folder / "demo.db",
                port=receiver.port,
                secret=signing.generate_secret(),
            )
        )
        config_path.chmod(0o600)
        config = load_config(config_path)
        logs.configure(config.logging.level, config.logging.format)
        await _enqueue_samples(config.database)
        print(f"demo: {len(events.EVENT_TYPES)} events queued; delivering…\n")
        await service.serve(config, until_idle=True)
        await _print_log(config.database)
    finally:
        await receiver.stop()
    print(f"\nreceiver got: {json.dumps(receiver.received, sort_keys=True)}")
    print(f"configuration: {config_path}")
    print(
        f"database:      {config.database}   (try: sqlite3 {config.database} "
        "'select * from event_log')"
    )
    return 0


async def _enqueue_samples(database: Path) -> None:
    conn = await admin.open_db(database)
    try:
        for number, type_ in enumerate(events.EVENT_TYPES, start=1):
            subject = "product_id" if type_.startswith("product.") else "order_id"
            data = json.dumps({subject: 1000 + number, "note": f"sample {type_}"})
            store = "store-1" if number % 2 else "store-2"
            await admin.enqueue(conn, type_, store, data)
    finally:
        await conn.close()


async def _print_log(database: Path) -> None:
    conn = await admin.open_db(database)
    try:
        rows = await admin.event_log(conn, None, None, 100)
    finally:
        await conn.close()
    rows.sort(key=lambda r: (events.EVENT_TYPES.index(r["type"]), r["webhook"] or ""))
    columns = ("created_at", "type", "store_id", "webhook", "state", "attempts", "last_error")
    print(tables.render(rows, columns))


if __name__ == "__main__":
    asyncio.run(main(None))
