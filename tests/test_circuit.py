"""The circuit breaker: a pure state machine, and what it does to a real endpoint."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from dispatcher.circuit import CLOSED, HALF_OPEN, OPEN, Circuit
from dispatcher.config import CircuitConfig
from tests.conftest import Receiver, query, webhook, write_config
from tests.helpers import prepare, run_cli, running, wait_until

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = CircuitConfig(failures=3, cooldown=10.0, max_cooldown=25.0)


def test_the_circuit_opens_after_the_configured_failures_in_a_row() -> None:
    circuit = Circuit(POLICY)
    assert [circuit.record(False, T0) for _ in range(3)] == [None, None, OPEN]
    assert circuit.state(T0 + timedelta(seconds=9.9)) == OPEN
    assert circuit.state(T0 + timedelta(seconds=10)) == HALF_OPEN


def test_a_success_resets_the_count_of_failures() -> None:
    circuit = Circuit(POLICY)
    for succeeded in (False, False, True, False, False):
        assert circuit.record(succeeded, T0) is None
    assert circuit.state(T0) == CLOSED


def test_a_failed_probe_doubles_the_cooldown_up_to_the_maximum() -> None:
    circuit = Circuit(POLICY)
    for _ in range(3):
        circuit.record(False, T0)
    probe = T0 + timedelta(seconds=10)
    assert circuit.record(False, probe) == OPEN
    assert circuit.open_until == probe + timedelta(seconds=20)
    probe = circuit.open_until
    assert circuit.record(False, probe) == OPEN
    assert circuit.open_until == probe + timedelta(seconds=25)


def test_a_successful_probe_closes_the_circuit() -> None:
    circuit = Circuit(POLICY)
    for _ in range(3):
        circuit.record(False, T0)
    assert circuit.record(True, T0 + timedelta(seconds=10)) == CLOSED
    assert circuit.state(T0 + timedelta(seconds=10)) == CLOSED
    assert circuit.failures == 0


def test_failures_zero_never_opens() -> None:
    circuit = Circuit(CircuitConfig(failures=0))
    for _ in range(100):
        assert circuit.record(False, T0) is None
    assert circuit.state(T0) == CLOSED


async def test_a_dead_endpoint_stops_being_attempted_without_spending_budgets(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    receiver.on("/down", down)
    hooks = [
        webhook("dead", receiver.url("/down"), max_in_flight=1),
        webhook("ok", receiver.url()),
    ]
    config_path = write_config(
        tmp_path,
        hooks,
        circuit={"failures": 5, "cooldown": "1h"},
        retry={"backoff": ["1h"]},
    )
    config = await prepare(config_path)
    with sqlite3.connect(config.database) as conn:
        conn.executemany(
            "INSERT INTO events (type, store_id, payload) VALUES ('order.created', 's', '{}')",
            [()] * 40,
        )
    async with running(config):
        await wait_until(lambda: len(receiver.at("/hook")) == 40)
        in_flight = "SELECT count(*) FROM deliveries WHERE webhook = 'dead' AND state = 'in_flight'"
        await wait_until(lambda: len(receiver.at("/down")) >= 5)
        await wait_until(lambda: query(config.database, in_flight) == [(0,)])
    assert len(receiver.at("/down")) == 5
    (open_until,) = query(
        config.database, "SELECT circuit_open_until FROM webhooks WHERE name = 'dead'"
    )[0]
    assert open_until is not None
    report = await run_cli("status", "--json", "-c", config_path)
    assert report.json()["webhooks"]["dead"]["circuit_open_until"] == open_until
    assert report.json()["webhooks"]["ok"]["circuit_open_until"] is None
    rows = query(
        config.database,
        "SELECT attempts, state, count(*) FROM deliveries WHERE webhook = 'dead'"
        " GROUP BY attempts, state ORDER BY attempts",
    )
    assert rows == [(0, "pending", 35), (1, "pending", 5)]
    waiting = query(
        config.database,
        "SELECT min(next_attempt_at) > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+50 minutes')"
        " FROM deliveries WHERE webhook = 'dead' AND attempts = 0",
    )
    assert waiting == [(1,)]
