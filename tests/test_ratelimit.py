"""The per-endpoint rate limit: the bucket's arithmetic, and the pace a receiver sees."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dispatcher.config import load_config
from dispatcher.errors import ConfigError
from dispatcher.ratelimit import RateLimit
from tests.conftest import Receiver, webhook, write_config
from tests.helpers import drain, prepare


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_one_seconds_worth_goes_at_once_and_the_rest_waits_its_turn() -> None:
    clock = FakeClock()
    limit = RateLimit(10.0, clock)
    waits = [limit.reserve() for _ in range(12)]
    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([0.1, 0.2])


def test_tokens_come_back_with_time_up_to_the_burst() -> None:
    clock = FakeClock()
    limit = RateLimit(2.0, clock)
    assert [limit.reserve(), limit.reserve(), limit.reserve()] == pytest.approx([0, 0, 0.5])
    clock.now += 60.0
    assert [limit.reserve(), limit.reserve()] == [0.0, 0.0]
    assert limit.reserve() == pytest.approx(0.5)


def test_a_limit_below_one_a_second_still_lets_one_through() -> None:
    limit = RateLimit(0.5, FakeClock())
    assert limit.reserve() == 0.0
    assert limit.reserve() == pytest.approx(2.0)


async def test_a_receiver_sees_deliveries_no_faster_than_the_limit(
    tmp_path: Path, receiver: Receiver
) -> None:
    hooks = [webhook("paced", receiver.url(), rate_limit=20, max_in_flight=8)]
    config = await prepare(write_config(tmp_path, hooks))
    with sqlite3.connect(config.database) as conn:
        conn.executemany(
            "INSERT INTO events (type, store_id, payload) VALUES ('order.created', 's', '{}')",
            [()] * 40,
        )
    await drain(config)
    arrivals = sorted(c.at for c in receiver.received)
    assert len(arrivals) == 40
    # A burst of 20 goes at once; the other 20 need at least 20 / 20 per second.
    assert arrivals[-1] - arrivals[0] >= 0.95


def test_a_negative_rate_limit_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, [webhook("w", "http://127.0.0.1:9/", rate_limit=-1)])
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert "webhooks[0].rate_limit" in problem
