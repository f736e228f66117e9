"""Queue rows as producers write them with plain SQL: what the engine cannot deliver is
rejected with a readable reason, and never holds up the rows behind it."""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.events import EVENT_TYPES
from tests.conftest import Receiver, query, webhook, write_config
from tests.helpers import drain, prepare, run_cli

MAX_PAYLOAD = 256

Value = str | bytes | int


def insert_row(db: Path, row: dict[str, Value]) -> int:
    """Insert `row` (column name → value) exactly as given, as any SQL client could; return
    its seq."""
    with sqlite3.connect(db) as conn:
        cursor = conn.execute(
            f"INSERT INTO events ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def valid_row(db: Path, n: int = 0) -> str:
    row: dict[str, Value] = {"type": "order.created", "store_id": "store-1", "payload": "{}"}
    seq = insert_row(db, {**row, "payload": json.dumps({"n": n})})
    return str(query(db, "SELECT id FROM events WHERE seq = ?", (seq,))[0][0])


BAD_ROWS: list[tuple[str, dict[str, Value], str]] = [
    ("unknown type", {"type": "order.creatd"}, "unknown event type 'order.creatd'"),
    ("integer type", {"type": 42}, "unknown event type '42'"),
    ("payload not JSON", {"payload": '{"a": '}, "payload is not a JSON object"),
    ("JSON but not an object", {"payload": "[1, 2]"}, "payload is a JSON list, not an object"),
    ("JSON string", {"payload": '"text"'}, "payload is a JSON str, not an object"),
    ("NaN in payload", {"payload": '{"a": NaN}'}, "NaN"),
    ("BLOB payload", {"payload": b'{"a": 1}'}, "BLOB"),
    ("empty store id", {"store_id": ""}, "store_id must be non-empty"),
    ("blank store id", {"store_id": " \t"}, "store_id must be non-empty"),
    ("BLOB store id", {"store_id": b"store-1"}, "store_id must be non-empty text"),
    ("oversized payload", {"payload": json.dumps({"a": "x" * MAX_PAYLOAD})},
     f"over the limit of {MAX_PAYLOAD}"),
    ("dot in event id", {"id": "evt.1"}, "contains '.'"),
]  # fmt: skip


def config_for(
    folder: Path, receiver: Receiver, path: str = "/hook", max_payload: int = MAX_PAYLOAD
) -> Path:
    hooks = [webhook("all", receiver.url(path))]
    return write_config(folder, hooks, queue={"max_payload_bytes": max_payload})


def insert_bad(db: Path, bad: dict[str, Value]) -> int:
    return insert_row(db, {"type": "order.created", "store_id": "store-1", "payload": "{}", **bad})


@pytest.mark.parametrize(("bad", "reason"), [(b, r) for _, b, r in BAD_ROWS],
                         ids=[name for name, _, _ in BAD_ROWS])  # fmt: skip
async def test_a_bad_row_is_rejected_with_its_reason_and_the_next_row_is_delivered(
    tmp_path: Path, receiver: Receiver, bad: dict[str, Value], reason: str
) -> None:
    config = await prepare(config_for(tmp_path, receiver))
    seq = insert_bad(config.database, bad)
    good = valid_row(config.database)
    await drain(config)

    ((state, error),) = query(config.database, "SELECT state, error FROM events WHERE seq = ?",
                              (seq,))  # fmt: skip
    assert state == "rejected"
    assert reason in error
    assert [c.message["id"] for c in receiver.received] == [good]
    assert query(config.database, "SELECT count(*) FROM deliveries") == [(1,)]


async def test_rejected_rows_show_in_status_and_in_the_event_log(
    tmp_path: Path, receiver: Receiver
) -> None:
    config_path = config_for(tmp_path, receiver)
    config = await prepare(config_path)
    seqs = [insert_bad(config.database, bad) for _, bad, _ in BAD_ROWS]
    valid_row(config.database)
    await drain(config)
    rejected = {
        row[0]: row[1]
        for row in query(config.database, "SELECT id, error FROM events WHERE state = 'rejected'")
    }
    assert len(rejected) == len(seqs)

    status = (await run_cli("status", "-c", config_path, "--json")).json()
    assert (status["rejected_events"], status["queued_events"]) == (len(seqs), 0)
    assert f"rejected events: {len(seqs)}" in (await run_cli("status", "-c", config_path)).out

    listed = await run_cli("events", "-c", config_path, "--status", "rejected", "--json")
    assert {r["event_id"]: r["last_error"] for r in listed.json()} == rejected
    assert {r["state"] for r in listed.json()} == {"rejected"}
    table = (await run_cli("events", "-c", config_path, "--status", "rejected")).out
    assert len(table.splitlines()) == 1 + len(seqs)
    assert all(event_id in table for event_id in rejected)


# --- rows the engine does not survive yet --------------------------------------------------

# Rows that once stopped the queue or went out unusable: each must be rejected cleanly.


async def assert_rejected_and_queue_moves_on(
    folder: Path, receiver: Receiver, sql: str, params: tuple[Any, ...]
) -> None:
    config = await prepare(config_for(folder, receiver, max_payload=1_000_000))
    with sqlite3.connect(config.database) as conn:
        seq = conn.execute(sql, params).lastrowid
    good = valid_row(config.database)
    await drain(config, timeout=3)
    ((state, error),) = query(config.database, "SELECT state, error FROM events WHERE seq = ?",
                              (seq,))  # fmt: skip
    assert state == "rejected"
    assert error
    assert [c.message["id"] for c in receiver.received] == [good]


INSERT_WITH_ID = "INSERT INTO events (id, type, store_id, payload) VALUES (?, ?, 's', '{}')"


async def test_a_blob_event_id_is_rejected(tmp_path: Path, receiver: Receiver) -> None:
    await assert_rejected_and_queue_moves_on(
        tmp_path, receiver, INSERT_WITH_ID, (b"evt-blob", "order.created")
    )


async def test_text_that_is_not_utf8_is_rejected(tmp_path: Path, receiver: Receiver) -> None:
    sql = (
        "INSERT INTO events (type, store_id, payload)"
        " VALUES ('order.created', 's', CAST(x'7b22223aff7d' AS TEXT))"
    )
    await assert_rejected_and_queue_moves_on(tmp_path, receiver, sql, ())


async def test_a_deeply_nested_payload_is_rejected(tmp_path: Path, receiver: Receiver) -> None:
    sql = "INSERT INTO events (type, store_id, payload) VALUES ('order.created', 's', ?)"
    nested = '{"a": ' + "[" * 5_000 + "]" * 5_000 + "}"
    await assert_rejected_and_queue_moves_on(tmp_path, receiver, sql, (nested,))


@pytest.mark.parametrize("event_id", ["", "  ", "evt\n1", "evt\x001"])
async def test_an_event_id_unusable_as_a_header_is_rejected(
    tmp_path: Path, receiver: Receiver, event_id: str
) -> None:
    await assert_rejected_and_queue_moves_on(
        tmp_path, receiver, INSERT_WITH_ID, (event_id, "order.created")
    )


# --- arbitrary rows ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
# Text a producer can actually store: SQLite text is UTF-8, which has no lone surrogates.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
payload_texts = (
    texts
    | st.dictionaries(st.text(max_size=5), json_values, max_size=4).map(json.dumps)
    | json_values.map(json.dumps)
    | st.sampled_from(['{"a": NaN}', '{"a": Infinity}', '{"a": 1e999}', "{", "{}"])
)
sql_integers = st.integers(-(2**63), 2**63 - 1)
columns = {
    "type": st.sampled_from(EVENT_TYPES) | texts | st.binary(max_size=20) | sql_integers,
    "store_id": st.sampled_from(["store-1", "", " "]) | texts | st.binary(max_size=10)
    | sql_integers,
    "payload": payload_texts | st.binary(max_size=40) | sql_integers,
}  # fmt: skip
arbitrary_rows = st.fixed_dictionaries(columns)
valid_rows = st.fixed_dictionaries(
    {
        "type": st.sampled_from(EVENT_TYPES),
        "store_id": st.sampled_from(["store-1", "s 2", "ünï"]),
        "payload": st.dictionaries(st.text(max_size=5), json_values, max_size=4).map(json.dumps),
    }
)


def stored(value: Value) -> str | bytes:
    """The value as the TEXT column keeps it: SQLite turns integers into their text."""
    return str(value) if isinstance(value, int) else value


def refuse(name: str) -> Any:
    raise ValueError(name)


def deliverable(row: dict[str, Value]) -> bool:
    """The contract's rule, written independently of the engine: a known type, a non-blank
    store id, and a payload that is a strict JSON object of at most MAX_PAYLOAD bytes."""
    type_, store_id, payload = (stored(row[k]) for k in ("type", "store_id", "payload"))
    if type_ not in EVENT_TYPES or not isinstance(store_id, str) or not store_id.strip():
        return False
    if not isinstance(payload, str) or len(payload.encode()) > MAX_PAYLOAD:
        return False
    try:
        data = json.loads(payload, parse_constant=refuse)
    except ValueError:
        return False
    return isinstance(data, dict) and all_finite(data)


def all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    return True


examples = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    # One receiver serves every example; each example has its own path and database.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(arbitrary_rows | valid_rows, min_size=1, max_size=8))
async def test_arbitrary_rows_deliver_every_valid_one_and_reject_every_other_with_a_reason(
    receiver: Receiver, tmp_path: Path, rows: list[dict[str, Value]]
) -> None:
    path = f"/rows/{next(examples)}"
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    config = await prepare(config_for(folder, receiver, path))
    seqs = [insert_row(config.database, row) for row in rows]
    await drain(config)

    outcome = {
        seq: (event_id, state, error)
        for seq, event_id, state, error in query(
            config.database, "SELECT seq, id, state, error FROM events"
        )
    }
    delivered = {c.message["id"]: c.message for c in receiver.at(path)}
    for seq, row in zip(seqs, rows, strict=True):
        event_id, state, error = outcome[seq]
        if deliverable(row):
            assert state == "dispatched"
            message = delivered.pop(event_id)
            assert message["data"] == json.loads(str(row["payload"]))
            assert message["store_id"] == stored(row["store_id"])
        else:
            assert state == "rejected"
            assert isinstance(error, str)
            assert error.strip()
    assert delivered == {}
