"""dispatcher.retry: the backoff schedule and the rule that ends a delivery, alone and as the
real engine applies it against a real receiver."""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.config import RetryConfig
from dispatcher.retry import FAILED, PENDING, SUCCEEDED, backoff_delay, decide
from tests.conftest import Receiver, insert_event, query, webhook, write_config
from tests.helpers import drain, prepare

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = RetryConfig(max_retries=3, backoff=(5.0, 300.0, 1800.0), jitter=0.2)


def wait_of(budget_used: int, policy: RetryConfig, draw: float = 0.0, **kw: float) -> float:
    """Seconds until the next attempt after a failed one, as `decide` schedules it."""
    decision = decide(budget_used, False, kw.get("retry_after"), NOW, policy, draw)
    assert decision.state == PENDING
    assert decision.next_attempt_at is not None
    return (decision.next_attempt_at - NOW).total_seconds()


# --- the schedule --------------------------------------------------------------------------


def test_each_retry_waits_its_own_backoff_delay_without_jitter() -> None:
    policy = replace(POLICY, jitter=0.0)
    assert [wait_of(used, policy) for used in range(3)] == [5.0, 300.0, 1800.0]


@pytest.mark.parametrize(("draw", "factor"), [(-1.0, 0.8), (0.0, 1.0), (1.0, 1.2), (0.5, 1.1)])
def test_jitter_spreads_the_delay_by_up_to_twenty_percent(draw: float, factor: float) -> None:
    assert backoff_delay(1, POLICY, draw) == pytest.approx(5.0 * factor)


@pytest.mark.parametrize("draw", [-7.0, -1.0001, 1.0001, 42.0])
def test_a_draw_outside_minus_one_to_one_never_leaves_the_jitter_bounds(draw: float) -> None:
    assert 4.0 <= backoff_delay(1, POLICY, draw) <= 6.0


@given(
    retry_number=st.integers(1, 20),
    draw=st.floats(-1.0, 1.0),
    jitter=st.floats(0.0, 0.5),
    backoff=st.lists(st.floats(0.001, 1e5), min_size=1, max_size=5),
)
def test_jittered_delay_stays_within_the_jitter_of_its_base(
    retry_number: int, draw: float, jitter: float, backoff: list[float]
) -> None:
    policy = RetryConfig(max_retries=20, backoff=tuple(backoff), jitter=jitter)
    base = backoff[min(retry_number, len(backoff)) - 1]
    delay = backoff_delay(retry_number, policy, draw)
    assert base * (1 - jitter) * (1 - 1e-9) <= delay <= base * (1 + jitter) * (1 + 1e-9)


def test_last_backoff_delay_repeats_when_the_schedule_is_shorter_than_max_retries() -> None:
    policy = RetryConfig(max_retries=6, backoff=(1.0, 2.0), jitter=0.0)
    assert [backoff_delay(n, policy, 0.0) for n in range(1, 7)] == [1.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        backoff_delay(0, POLICY, 0.0)


# --- Retry-After ---------------------------------------------------------------------------


def test_retry_after_longer_than_the_backoff_raises_the_wait() -> None:
    assert wait_of(0, POLICY, retry_after=120.0) == 120.0


def test_retry_after_shorter_than_the_backoff_does_not_shorten_it() -> None:
    assert wait_of(1, replace(POLICY, jitter=0.0), retry_after=1.0) == 300.0


def test_retry_after_is_clamped_to_max_retry_after() -> None:
    policy = replace(POLICY, max_retry_after=600.0)
    assert wait_of(0, policy, retry_after=86_400.0) == 600.0


# --- the end of a delivery -----------------------------------------------------------------


def test_success_ends_the_delivery_whatever_budget_is_left() -> None:
    for used in (0, 2, 3):
        assert decide(used, True, None, NOW, POLICY, 0.0).state == SUCCEEDED


def test_delivery_fails_once_the_first_attempt_and_every_retry_failed() -> None:
    states = [decide(used, False, None, NOW, POLICY, 0.0).state for used in range(4)]
    assert states == [PENDING, PENDING, PENDING, FAILED]


def test_max_retries_zero_fails_at_the_first_failed_attempt() -> None:
    decision = decide(0, False, 30.0, NOW, replace(POLICY, max_retries=0), 0.0)
    assert (decision.state, decision.next_attempt_at) == (FAILED, None)


def test_a_budget_overspent_by_a_lowered_max_retries_fails_at_once() -> None:
    assert decide(7, False, None, NOW, replace(POLICY, max_retries=2), 0.0).state == FAILED


# --- the rule over whole outcome sequences -------------------------------------------------


@dataclass
class Run:
    """One delivery driven through `decide` until it ends or the scripted outcomes run out."""

    outcomes_used: int
    state: str
    waits: list[float]


def simulate(
    outcomes: list[tuple[bool, float | None]], policy: RetryConfig, draws: list[float]
) -> Run:
    now, waits, state = NOW, [], PENDING
    used = 0
    for (succeeded, retry_after), draw in zip(outcomes, itertools.cycle(draws), strict=False):
        decision = decide(used, succeeded, retry_after, now, policy, draw)
        used += 1
        state = decision.state
        if state != PENDING:
            break
        assert decision.next_attempt_at is not None
        waits.append((decision.next_attempt_at - now).total_seconds())
        now = decision.next_attempt_at
    return Run(used, state, waits)


policies = st.builds(
    RetryConfig,
    max_retries=st.integers(0, 8),
    backoff=st.lists(st.floats(0.01, 1e4), min_size=1, max_size=4).map(tuple),
    jitter=st.floats(0.0, 0.5),
    max_retry_after=st.floats(1.0, 1e4),
)
outcome_lists = st.lists(
    st.tuples(st.booleans(), st.none() | st.floats(0.0, 1e5)), min_size=1, max_size=15
)


@given(outcomes=outcome_lists, policy=policies, draws=st.lists(st.floats(-1, 1), min_size=1))
def test_a_delivery_takes_at_most_one_plus_max_retries_attempts_and_succeeds_iff_one_did(
    outcomes: list[tuple[bool, float | None]], policy: RetryConfig, draws: list[float]
) -> None:
    run = simulate(outcomes, policy, draws)
    budget = 1 + policy.max_retries
    first_success = next((i for i, (ok, _) in enumerate(outcomes) if ok), None)
    expected_used = min(len(outcomes), budget)
    if first_success is not None:
        expected_used = min(expected_used, first_success + 1)

    assert run.outcomes_used == expected_used <= budget
    assert (run.state == SUCCEEDED) == (first_success is not None and first_success < budget)
    # Still pending only when the script ended before the delivery did.
    assert (run.state == PENDING) == (run.state != SUCCEEDED and len(outcomes) < budget)
    assert (run.state == FAILED) == (run.state != SUCCEEDED and len(outcomes) >= budget)


@given(outcomes=outcome_lists, policy=policies, draws=st.lists(st.floats(-1, 1), min_size=1))
def test_every_wait_is_the_jittered_backoff_or_the_clamped_retry_after(
    outcomes: list[tuple[bool, float | None]], policy: RetryConfig, draws: list[float]
) -> None:
    run = simulate(outcomes, policy, draws)
    # One wait per retry: there are fewer waits than outcomes.
    pairs = zip(run.waits, outcomes, strict=False)
    for retry_number, (wait, (_, retry_after)) in enumerate(pairs, start=1):
        base = policy.backoff[min(retry_number, len(policy.backoff)) - 1]
        asked = 0.0 if retry_after is None else min(retry_after, policy.max_retry_after)
        low = max(base * (1 - policy.jitter), asked)
        high = max(base * (1 + policy.jitter), asked)
        # timedelta keeps microseconds, so a wait may be off by one from the float delay.
        assert low - 1e-5 <= wait <= high + 1e-5


# --- the rule as the real engine applies it ------------------------------------------------

examples = itertools.count()


@settings(
    max_examples=15,
    deadline=None,
    # The receiver fixture is shared by the examples on purpose (one server per test); each
    # example uses its own path on it and its own database, so nothing leaks between them.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    answers=st.lists(st.sampled_from([200, 201, 204, 302, 404, 429, 500, 503]), max_size=6),
    max_retries=st.integers(0, 3),
)
async def test_engine_numbers_attempts_without_gaps_within_the_budget_and_succeeds_iff_2xx(
    receiver: Receiver, tmp_path: Path, answers: list[int], max_retries: int
) -> None:
    path = f"/scripted/{next(examples)}"
    script = iter(answers)
    answered: list[int] = []

    async def scripted(request: web.Request) -> web.Response:
        # Once the script is spent the endpoint stays down, so only scripted 2xx can succeed.
        answered.append(next(script, 500))
        return web.Response(status=answered[-1])

    receiver.on(path, scripted)
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    retry = {"max_retries": max_retries, "backoff": ["10ms"]}
    config = await prepare(write_config(folder, [webhook("s", receiver.url(path))], retry=retry))
    event_id = insert_event(config.database)
    await drain(config)

    rows = query(config.database, "SELECT number, status_code FROM attempts ORDER BY number")
    ((state, count),) = query(config.database, "SELECT state, attempts FROM deliveries")
    assert [number for number, _ in rows] == list(range(1, len(rows) + 1))
    assert [status for _, status in rows] == answered
    budget = 1 + max_retries
    first_2xx = next((i for i, status in enumerate(answers) if 200 <= status < 300), budget)
    assert count == len(rows) == min(first_2xx + 1, budget)
    assert (state == SUCCEEDED) == any(200 <= status < 300 for status in answered)
    assert {c.headers["webhook-id"] for c in receiver.at(path)} == {event_id}
