"""The engine end to end against a real receiver and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from dispatcher.events import EVENT_TYPES
from dispatcher.producer import enqueue
from tests.conftest import Receiver, insert_event, query, webhook, write_config
from tests.helpers import drain, prepare, running


async def test_every_event_type_is_delivered_with_its_envelope(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await prepare(write_config(tmp_path, [webhook("all", receiver.url())]))
    ids = {
        insert_event(config.database, t, "store-1", json.dumps({"n": i}))
        for i, t in enumerate(EVENT_TYPES)
    }
    await drain(config)
    messages = [c.message for c in receiver.received]
    assert {m["type"] for m in messages} == set(EVENT_TYPES)
    assert {m["id"] for m in messages} == ids
    assert all(
        m["store_id"] == "store-1" and set(m) == {"id", "type", "timestamp", "store_id", "data"}
        for m in messages
    )
    states = query(config.database, "SELECT state, count(*) FROM deliveries GROUP BY state")
    assert states == [("succeeded", 12)]


async def test_only_subscribed_stores_receive_events(tmp_path: Path, receiver: Receiver) -> None:
    hooks = [webhook("one", receiver.url("/one"), stores=["store-1"])]
    config = await prepare(write_config(tmp_path, hooks))
    wanted = insert_event(config.database, store_id="store-1")
    insert_event(config.database, store_id="store-2")
    await drain(config)
    assert [c.message["id"] for c in receiver.received] == [wanted]


async def test_only_subscribed_event_types_are_delivered(
    tmp_path: Path, receiver: Receiver
) -> None:
    hooks = [webhook("orders", receiver.url(), events=["order.shipped", "product.*"])]
    config = await prepare(write_config(tmp_path, hooks))
    for type_ in EVENT_TYPES:
        insert_event(config.database, type_)
    await drain(config)
    got = sorted(c.message["type"] for c in receiver.received)
    assert got == sorted(["order.shipped", "product.created", "product.updated", "product.deleted"])


async def test_one_event_fans_out_to_every_matching_webhook(
    tmp_path: Path, receiver: Receiver
) -> None:
    hooks = [webhook(f"w{i}", receiver.url(f"/w{i}")) for i in range(3)]
    hooks.append(webhook("other-store", receiver.url("/x"), stores=["store-9"]))
    config = await prepare(write_config(tmp_path, hooks))
    event_id = insert_event(config.database)
    await drain(config)
    assert sorted(c.path for c in receiver.received) == ["/w0", "/w1", "/w2"]
    assert {c.headers["webhook-id"] for c in receiver.received} == {event_id}
    assert {c.body for c in receiver.received} == {receiver.received[0].body}


async def test_retry_then_success_keeps_the_event_id(tmp_path: Path, receiver: Receiver) -> None:
    answers = iter([500, 502, 200])

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=next(answers))

    receiver.on("/flaky", flaky)
    config = await prepare(write_config(tmp_path, [webhook("f", receiver.url("/flaky"))]))
    event_id = insert_event(config.database)
    await drain(config)
    assert [c.headers["webhook-id"] for c in receiver.received] == [event_id] * 3
    rows = query(
        config.database, "SELECT number, status_code, error_kind FROM attempts ORDER BY number"
    )
    assert rows == [(1, 500, "http_status"), (2, 502, "http_status"), (3, 200, None)]
    assert query(config.database, "SELECT state, attempts FROM deliveries") == [("succeeded", 3)]


async def test_delivery_fails_after_exactly_four_attempts(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=500, text="database down")

    receiver.on("/down", down)
    config = await prepare(write_config(tmp_path, [webhook("d", receiver.url("/down"))]))
    event_id = insert_event(config.database)
    await drain(config)
    assert len(receiver.received) == 4
    log = query(
        config.database, "SELECT event_id, webhook, state, attempts, last_error FROM event_log"
    )
    assert log == [(event_id, "d", "failed", 4, "HTTP 500")]
    excerpts = query(config.database, "SELECT response_excerpt FROM attempts")
    assert excerpts == [("database down",)] * 4


async def test_a_redirect_is_a_failure_and_is_not_followed(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    receiver.on("/moved", moved)
    hooks = [webhook("r", receiver.url("/moved"))]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 0}))
    insert_event(config.database)
    await drain(config)
    assert [c.path for c in receiver.received] == ["/moved"]
    rows = query(config.database, "SELECT status_code, error_kind, error FROM attempts")
    assert rows == [(302, "redirect", "redirect not followed: HTTP 302 to /elsewhere")]


async def test_a_hanging_endpoint_is_recorded_as_a_timeout(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    receiver.on("/hang", hang)
    hooks = [webhook("h", receiver.url("/hang"), timeout="300ms")]
    config = await prepare(write_config(tmp_path, hooks, retry={"max_retries": 0}))
    insert_event(config.database)
    await drain(config)
    rows = query(
        config.database, "SELECT status_code, error_kind, error, duration_ms FROM attempts"
    )
    assert len(rows) == 1
    status, kind, error, duration = rows[0]
    assert (status, kind) == (None, "timeout")
    assert "0.3s" in error
    assert 250 <= duration < 2000


async def test_an_event_inserted_with_sql_while_running_is_delivered(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await prepare(write_config(tmp_path, [webhook("live", receiver.url())]))
    async with running(config):
        await asyncio.sleep(0.1)
        event_id = insert_event(config.database, payload='{"order_id": 42}')
        await receiver.wait_for(1)
    message = receiver.received[0].message
    assert message["id"] == event_id
    assert message["data"] == {"order_id": 42}
    assert query(config.database, "SELECT state FROM events") == [("dispatched",)]


async def test_headers_follow_standard_webhooks(tmp_path: Path, receiver: Receiver) -> None:
    config = await prepare(write_config(tmp_path, [webhook("h", receiver.url())]))
    insert_event(config.database)
    await drain(config)
    headers = receiver.received[0].headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("webhook-dispatcher/")
    assert headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in headers


async def test_the_python_producer_helper_enqueues_a_deliverable_event(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await prepare(write_config(tmp_path, [webhook("p", receiver.url())]))
    event_id = enqueue(config.database, "product.updated", "store-3", {"sku": "A-1", "qty": 2})
    await drain(config)
    message = receiver.received[0].message
    assert (message["id"], message["type"], message["store_id"]) == (
        event_id,
        "product.updated",
        "store-3",
    )
    assert message["data"] == {"sku": "A-1", "qty": 2}


def test_the_python_producer_helper_refuses_what_the_daemon_would_reject(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        enqueue(tmp_path / "x.db", "order.creatd", "s", {})
    with pytest.raises(ValueError, match="store_id"):
        enqueue(tmp_path / "x.db", "order.created", " ", {})
    with pytest.raises(ValueError, match="Out of range float"):
        enqueue(tmp_path / "x.db", "order.created", "s", {"x": float("nan")})
    assert not (tmp_path / "x.db").exists()


async def test_the_payload_reaches_the_receiver_as_the_producer_wrote_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = await prepare(write_config(tmp_path, [webhook("w", receiver.url())]))
    payload = '{"total": 19.90, "b": 1, "a": [1e2, "\\u00e9t\\u00e9"]}'
    insert_event(config.database, payload=payload)
    await drain(config)
    body = receiver.received[0].body.decode()
    assert body.endswith(f',"data":{payload}}}')


def test_the_python_producer_helper_refuses_an_id_the_daemon_would_reject(tmp_path: Path) -> None:
    for bad in ("a.b", " ", "évt-1", "evt\n1"):
        with pytest.raises(ValueError, match="event id"):
            enqueue(tmp_path / "x.db", "order.created", "s", {}, event_id=bad)
    assert not (tmp_path / "x.db").exists()
