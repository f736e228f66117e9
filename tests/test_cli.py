"""The command line end to end: `python -m dispatcher ...` in a subprocess, on real files, with
the daemon delivering to a real receiver.

The receiver runs in the test's event loop, so every subprocess here is awaited through
asyncio rather than run with the blocking subprocess module.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from aiohttp import web

from dispatcher import signing, tables
from tests.conftest import Receiver, insert_event, query, webhook, write_config
from tests.helpers import Daemon, drain, prepare, run_cli, wait_until


def succeeded_deliveries(db: Path) -> int:
    return int(query(db, "SELECT count(*) FROM deliveries WHERE state = 'succeeded'")[0][0])


# --- check-config and run with a broken file -----------------------------------------------

BAD_CONFIG = """\
database: ./never.db
http:
  timeout: soon
retry:
  max_retries: -1
webhooks:
  - name: erp
    url: https://erp.example.com/h
    events: [order.creatd]
    stores: [store-1]
"""


async def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, [webhook("erp", "http://127.0.0.1:1/h")])
    result = await run_cli("check-config", "-c", config)
    assert (result.code, result.err) == (0, "")
    assert result.out.startswith(f"{config}: ok (1 webhooks")


async def test_check_config_lists_every_mistake_with_file_and_line_and_exits_2(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(BAD_CONFIG)
    result = await run_cli("check-config", "-c", config)
    assert result.code == 2
    located = [line.split(": ")[0:2] for line in result.err.splitlines()]
    assert located == [
        [f"{config}:3", "http.timeout"],
        [f"{config}:5", "retry.max_retries"],
        [f"{config}:9", "webhooks[0].events[0]"],
    ]
    assert "unknown event type 'order.creatd'" in result.err


async def test_check_config_json_gives_the_problems_as_a_list(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(BAD_CONFIG)
    result = await run_cli("check-config", "--json", "-c", config)
    assert result.code == 2
    report = result.json()
    assert report["ok"] is False
    assert [p.split(":")[1] for p in report["problems"]] == ["3", "5", "9"]


async def test_run_refuses_a_broken_configuration_without_creating_the_database(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(BAD_CONFIG)
    result = await run_cli("run", "-c", config)
    assert result.code == 2
    assert len(result.err.splitlines()) == 3
    assert not (tmp_path / "never.db").exists()


# --- enqueue -------------------------------------------------------------------------------


async def test_enqueue_prints_the_id_of_the_row_it_inserted(tmp_path: Path) -> None:
    config = write_config(tmp_path, [webhook("erp", "http://127.0.0.1:1/h")])
    data = '{"order_id": 42, "note": "größe"}'
    result = await run_cli(
        "enqueue", "-c", config, "--type", "order.created", "--store", "s-1", "--data", data
    )
    assert (result.code, result.err) == (0, "")
    event_id = result.out.strip()
    rows = query(
        tmp_path / "dispatcher.db", "SELECT id, type, store_id, payload, state FROM events"
    )
    assert rows == [(event_id, "order.created", "s-1", data, "queued")]


async def test_enqueue_reads_the_payload_from_a_file_and_takes_a_given_id(tmp_path: Path) -> None:
    config = write_config(tmp_path, [webhook("erp", "http://127.0.0.1:1/h")])
    (tmp_path / "payload.json").write_text('{"sku": "A-1"}\n', encoding="utf-8")
    result = await run_cli(
        "enqueue", "-c", config, "--json", "--type", "product.updated", "--store", "s",
        "--data", f"@{tmp_path / 'payload.json'}", "--id", "evt_mine",
    )  # fmt: skip
    assert result.code == 0
    assert result.json() == {"id": "evt_mine"}
    rows = query(tmp_path / "dispatcher.db", "SELECT id, payload FROM events")
    assert rows == [("evt_mine", '{"sku": "A-1"}\n')]


BAD_ENQUEUE = [
    (["--type", "order.creatd", "--store", "s", "--data", "{}"], "--type: unknown event type"),
    (["--type", "order.created", "--store", "s"], "required: --data"),
    (["--type", "order.created", "--store", " ", "--data", "{}"], "--store: empty store id"),
    (["--type", "order.created", "--store", "s", "--data", "{"], "--data: not a valid JSON"),
    (["--type", "order.created", "--store", "s", "--data", "[1]"], "JSON list, not an object"),
    (["--type", "order.created", "--store", "s", "--data", '{"a": NaN}'], "NaN"),
    (["--type", "order.created", "--store", "s", "--data", "@/no/such/file"], "cannot read"),
    (["--type", "order.created", "--store", "s", "--data", "{}", "--id", "a.b"], "--id:"),
    (["--type", "order.created", "--store", "s", "--data", "{}", "--id", "évt-1"], "--id:"),
    (["--type", "order.created", "--store", "s", "--data", '{"a": "' + "x" * 80 + '"}'],
     "over queue.max_payload_bytes (64)"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_ENQUEUE)
async def test_bad_enqueue_arguments_give_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    hooks = [webhook("erp", "http://127.0.0.1:1/h")]
    config = write_config(tmp_path, hooks, queue={"max_payload_bytes": 64})
    result = await run_cli("enqueue", "-c", config, *args)
    assert result.code == 2
    assert result.out == ""
    assert len(result.err.splitlines()) == 1
    assert message in result.err
    db = tmp_path / "dispatcher.db"
    assert not db.exists() or query(db, "SELECT count(*) FROM events") == [(0,)]


async def test_enqueue_refuses_an_id_that_exists_already(tmp_path: Path) -> None:
    config = write_config(tmp_path, [webhook("erp", "http://127.0.0.1:1/h")])
    args: list[str | Path] = ["enqueue", "-c", config, "--type", "order.created", "--store", "s"]
    args += ["--data", "{}"]
    assert (await run_cli(*args, "--id", "evt_1")).code == 0
    again = await run_cli(*args, "--id", "evt_1")
    assert again.code == 2
    assert again.err == "error: --id: an event with id 'evt_1' exists already\n"


# --- other usage and runtime errors --------------------------------------------------------

BAD_USAGE = [
    (["events", "--status", "lost"], "--status: unknown status 'lost'"),
    (["events", "--limit", "0"], "--limit: must be at least 1"),
    (["events", "--webhook", "nobody"], "--webhook: unknown webhook 'nobody' (valid: erp)"),
    (["attempts", "evt_absent"], "no event with id 'evt_absent'"),
    (["redeliver"], "say which deliveries"),
    (["redeliver", "--webhook", "erp", "--since", "yesterday"], "--since: not a time"),
    (["redeliver", "--webhook", "erp", "--since", "1h", "--until", "2h"], "is not before"),
    (["redeliver", "--delivery", "99"], "--delivery: no delivery with id 99"),
    (["prune", "--older-than", "soon"], "--older-than: not a duration"),
]


@pytest.mark.parametrize(("args", "message"), BAD_USAGE)
async def test_a_usage_mistake_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    config = write_config(tmp_path, [webhook("erp", "http://127.0.0.1:1/h")])
    result = await run_cli(*args, "-c", config)
    assert (result.code, result.out) == (2, "")
    assert len(result.err.splitlines()) == 1
    assert message in result.err


async def test_a_runtime_failure_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "dispatcher.db").write_text("not a database\n")
    config = write_config(tmp_path, [webhook("erp", "http://127.0.0.1:1/h")])
    result = await run_cli("status", "-c", config)
    assert result.code == 1
    db = tmp_path / "dispatcher.db"
    assert result.err == f"error: {db}: not a SQLite database; refusing to touch it\n"


async def test_no_command_prints_help_and_exits_2() -> None:
    result = await run_cli()
    assert result.code == 2
    assert "commands:" in result.err


# --- the daemon, end to end ----------------------------------------------------------------


async def test_an_event_enqueued_by_the_cli_is_delivered_by_the_daemon_subprocess(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_config(tmp_path, [webhook("erp", receiver.url())])
    db = tmp_path / "dispatcher.db"
    daemon = Daemon(config)
    await daemon.start()
    try:
        enqueued = await run_cli(
            "enqueue", "-c", config, "--type", "order.shipped", "--store", "store-7",
            "--data", '{"order_id": 7}',
        )  # fmt: skip
        event_id = enqueued.out.strip()
        await receiver.wait_for(1)
        await wait_until(lambda: succeeded_deliveries(db) == 1)
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.log.read_text()

    message = receiver.received[0].message
    assert (message["id"], message["type"], message["data"]) == (
        event_id,
        "order.shipped",
        {"order_id": 7},
    )
    events = await run_cli("events", "-c", config, "--json")
    assert [(r["event_id"], r["webhook"], r["state"]) for r in events.json()] == [
        (event_id, "erp", "succeeded")
    ]


async def test_events_attempts_and_status_report_a_real_delivery_as_tables_and_json(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance")

    receiver.on("/broken", broken)
    hooks = [webhook("good", receiver.url("/good")), webhook("bad", receiver.url("/broken"))]
    config = write_config(tmp_path, hooks, retry={"max_retries": 1})
    db = tmp_path / "dispatcher.db"
    daemon = Daemon(config)
    await daemon.start()
    try:
        event_id = insert_event(db, "order.created", "store-1", '{"n": 1}')
        await wait_until(
            lambda: (
                query(db, "SELECT state FROM deliveries ORDER BY webhook")
                == [("failed",), ("succeeded",)]
            )
        )
    finally:
        assert await daemon.stop() == 0

    events = await run_cli("events", "-c", config)
    lines = events.out.splitlines()
    assert lines[0].split() == ["CREATED_AT", "EVENT_ID", "TYPE", "STORE_ID", "WEBHOOK",
                                "DELIVERY_ID", "STATE", "ATTEMPTS", "LAST_ERROR"]  # fmt: skip
    assert [line.split()[4:8] for line in lines[1:]] == [
        ["bad", "2", "failed", "2"],
        ["good", "1", "succeeded", "1"],
    ]
    assert lines[1].endswith("HTTP 503")
    as_json = (await run_cli("events", "-c", config, "--json", "--status", "failed")).json()
    assert [(r["event_id"], r["webhook"], r["attempts"]) for r in as_json] == [(event_id, "bad", 2)]

    attempts = await run_cli("attempts", event_id, "-c", config)
    rows = [line.split()[:5] for line in attempts.out.splitlines()[1:]]
    assert [r[0:3] + r[4:5] for r in rows] == [
        ["bad", "2", "1", "503"],
        ["bad", "2", "2", "503"],
        ["good", "1", "1", "200"],
    ]
    tries = (await run_cli("attempts", event_id, "-c", config, "--json")).json()
    assert [(t["webhook"], t["number"], t["status_code"], t["error_kind"]) for t in tries] == [
        ("bad", 1, 503, "http_status"),
        ("bad", 2, 503, "http_status"),
        ("good", 1, 200, None),
    ]
    assert tries[0]["response_excerpt"] == "maintenance"

    status = await run_cli("status", "-c", config)
    assert "deliveries:      pending 0, in_flight 0, succeeded 1, failed 1" in status.out
    health = {line.split()[0]: line.split()[1:8] for line in status.out.splitlines()[5:]}
    assert health == {
        "bad": ["yes", "0", "0", "0", "1", "2", "0.0%"],
        "good": ["yes", "0", "0", "1", "0", "1", "100.0%"],
    }
    report = (await run_cli("status", "-c", config, "--json")).json()
    assert report["deliveries"] == {"pending": 0, "in_flight": 0, "succeeded": 1, "failed": 1}
    assert report["webhooks"]["bad"]["success_rate_last_hour"] == 0.0
    assert report["webhooks"]["good"]["url"] == receiver.url("/good")


async def test_a_second_daemon_on_the_same_database_exits_1(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = write_config(tmp_path, [webhook("erp", receiver.url())])
    first = Daemon(config)
    await first.start()
    try:
        second = await run_cli("run", "-c", config)
    finally:
        assert await first.stop() == 0
    assert second.code == 1
    assert len(second.err.splitlines()) == 1
    assert second.err.strip().endswith("another webhook-dispatcher is running on this database")


# --- redeliver, prune, gen-secret ----------------------------------------------------------


async def test_redeliver_by_delivery_id_and_attempts_shows_the_manual_attempt(
    tmp_path: Path, receiver: Receiver
) -> None:
    answers = iter([500, 200])

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=next(answers))

    receiver.on("/flaky", flaky)
    config_path = write_config(tmp_path, [webhook("f", receiver.url("/flaky"))],
                               retry={"max_retries": 0})  # fmt: skip
    config = await prepare(config_path)
    event_id = insert_event(config.database)
    await drain(config)
    ((delivery_id, state),) = query(config.database, "SELECT id, state FROM deliveries")
    assert state == "failed"

    again = await run_cli("redeliver", "-c", config_path, "--delivery", str(delivery_id))
    assert (again.code, again.out) == (0, "1 deliveries put back in the queue\n")
    await drain(config)

    attempts = await run_cli("attempts", event_id, "-c", config_path)
    header, *lines = attempts.out.splitlines()
    assert header.split()[-1] == "MANUAL"
    assert [(line.split()[2], line.split()[-1]) for line in lines] == [("1", "no"), ("2", "yes")]


async def test_redeliver_reads_a_time_without_a_zone_as_utc_whatever_the_local_zone(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404)

    receiver.on("/gone", gone)
    config_path = write_config(tmp_path, [webhook("w", receiver.url("/gone"))],
                               retry={"max_retries": 0})  # fmt: skip
    config = await prepare(config_path)
    with sqlite3.connect(config.database) as conn:
        conn.executemany(
            "INSERT INTO events (id, type, store_id, payload, created_at)"
            " VALUES (?, 'order.created', 's', '{}', ?)",
            [("evt_before", "2026-01-01T23:30:00.000Z"), ("evt_after", "2026-01-02T00:30:00.000Z")],
        )
    await drain(config)

    since = "2026-01-02T00:00"
    result = await run_cli(
        "redeliver", "-c", config_path, "--webhook", "w", "--since", since, TZ="Asia/Tokyo"
    )
    assert (result.code, result.out) == (0, "1 deliveries put back in the queue\n")
    pending = query(config.database, "SELECT event_id FROM deliveries WHERE state = 'pending'")
    assert pending == [("evt_after",)]


def age_events(db: Path, event_ids: list[str], days: int) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "UPDATE events SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) WHERE id = ?",
            [(f"-{days} days", event_id) for event_id in event_ids],
        )


async def test_prune_removes_old_finished_events_with_their_attempts_and_keeps_the_rest(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=500)

    receiver.on("/down", down)
    hooks = [webhook("ok", receiver.url("/ok"), stores=["a"]),
             webhook("down", receiver.url("/down"), stores=["b"])]  # fmt: skip
    config_path = write_config(tmp_path, hooks, retry={"max_retries": 1})
    config = await prepare(config_path)
    db = config.database
    delivered, failed, recent = (insert_event(db, store_id=s) for s in ("a", "b", "a"))
    rejected = insert_event(db, type_="order.lost")
    await drain(config)
    queued = insert_event(db, store_id="a")
    waiting = insert_event(db, store_id="b")
    with sqlite3.connect(db) as conn:
        # Fanned out by hand so that its delivery stays pending: the daemon is not running.
        conn.execute("UPDATE events SET state = 'dispatched' WHERE id = ?", (waiting,))
        conn.execute(
            "INSERT INTO deliveries (event_id, webhook, next_attempt_at, created_at, updated_at)"
            " VALUES (?, 'down', '2000-01-01', '2000-01-01', '2000-01-01')",
            (waiting,),
        )
    age_events(db, [delivered, failed, rejected, queued, waiting], days=40)

    result = await run_cli("prune", "-c", config_path, "--older-than", "30d", "--json")
    assert result.code == 0
    assert result.json() == {"events": 3, "deliveries": 2, "attempts": 3}
    remaining = {row[0] for row in query(db, "SELECT id FROM events")}
    assert remaining == {recent, queued, waiting}
    assert query(db, "SELECT count(*) FROM attempts") == [(1,)]
    assert query(db, "SELECT count(*) FROM deliveries") == [(2,)]


async def test_gen_secret_prints_a_fresh_secret_that_decodes() -> None:
    first, second = await run_cli("gen-secret"), await run_cli("gen-secret")
    assert first.code == 0
    secret = first.out.strip()
    assert secret.startswith("whsec_")
    assert len(signing.decode_secret(secret)) >= signing.MIN_SECRET_BYTES
    assert secret != second.out.strip()


# --- the tables ----------------------------------------------------------------------------


def test_tables_align_columns_and_right_align_numbers() -> None:
    rows = [{"name": "a", "n": 5, "rate": 2.5}, {"name": "longer", "n": 1234, "rate": None}]
    assert tables.render(rows, ["name", "n", "rate"]).splitlines() == [
        "NAME       N  RATE",
        "a          5   2.5",
        "longer  1234     -",
    ]


def test_tables_escape_control_characters_and_cut_long_cells() -> None:
    rows = [{"error": "line one\nline two\x1b[31m"}, {"error": "x" * 100}]
    lines = tables.render(rows, ["error"]).splitlines()
    assert lines[1] == "line one\\nline two\\x1b[31m"
    assert len(lines[2]) == tables.MAX_CELL
    assert lines[2].endswith("…")


def test_tables_show_the_empty_message_when_there_are_no_rows() -> None:
    assert tables.render([], ["a"], "no events match") == "no events match"
    assert tables.render([], ["a"]) == "A"
