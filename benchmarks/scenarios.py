"""The scenarios: each sets up a database and a configuration, runs the daemon as a
subprocess against the receiver, and turns what it observed into figures and checks."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import ceiling as yardstick
from benchmarks import workload
from benchmarks.processes import PROJECT, BenchError, Daemon, ReceiverProcess
from benchmarks.report import Check, Result, at_most, rate_at_least
from benchmarks.watch import Watch
from dispatcher import engine, signing
from dispatcher.config import Secret

# Requests in flight at once in every scenario that measures a rate, so that rates compare.
CONCURRENCY = 64
FAN_OUT_PER_WEBHOOK = 4  # 50 webhooks x 4 workers, capped at CONCURRENCY by the global limit
BROKEN_IN_FLIGHT = 8  # the per-endpoint default of http.max_in_flight_per_endpoint
HANG_TIMEOUT = "2s"
LATENCY_RATE = 200.0
CACHE_FROM = 100_000  # backlogs this large are built once and copied afterwards
# Past the engine's switch to its slow idle polling, so the figure is the steady idle cost;
# read with a default because the constant is the engine's internal business.
IDLE_SETTLE = float(getattr(engine, "IDLE_AFTER", 2.0)) + 0.5


@dataclass(frozen=True, slots=True)
class Sizes:
    ceiling: int
    throughput: int
    fan_out_events: int
    fan_out_webhooks: int
    isolation: int
    latency_seconds: float
    backlog: int
    backlog_drain: int
    idle_seconds: float


FULL = Sizes(20_000, 20_000, 1_000, 50, 20_000, 10.0, 1_000_000, 50_000, 60.0)
SMALL = Sizes(300, 300, 10, 50, 300, 2.0, 5_000, 1_000, 3.0)


@dataclass(slots=True)
class Context:
    sizes: Sizes
    workdir: Path
    cache: Path
    receiver: ReceiverProcess
    done: dict[str, Result] = field(default_factory=dict)

    def folder(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def figure(self, scenario: str, name: str) -> float | None:
        result = self.done.get(scenario)
        return result.figures.get(name) if result and not result.error else None


def _deadline(deliveries: int) -> float:
    """How long a drain may take before the scenario gives up: generous, but finite."""
    return 60.0 + deliveries / 100.0


def _drain(
    ctx: Context, config: Path, db: Path, deliveries: int, webhook: str | None = None
) -> tuple[float, float]:
    """Run the daemon until `deliveries` have succeeded. Returns the seconds from process
    start to the last of them being recorded, and the daemon's CPU seconds by then: the
    CPU figure varies far less than the wall clock on a shared machine."""
    ctx.receiver.reset()
    with Daemon(config) as daemon, Watch(db) as watch:
        watch.wait_for_succeeded(deliveries, daemon, _deadline(deliveries), webhook)
        cpu = daemon.cpu_seconds()
        end = watch.nth_finished_at(deliveries, webhook)
    return end - daemon.started_at, cpu


def ceiling(ctx: Context) -> Result:
    count = ctx.sizes.ceiling
    messages = workload.message_bodies(count)
    secret = Secret(signing.decode_secret(signing.generate_secret()))
    ctx.receiver.reset()
    seconds, failures = yardstick.send_all(
        ctx.receiver.url("/ok/ceiling"), messages, secret, CONCURRENCY
    )
    arrived = ctx.receiver.count("/ok/ceiling")
    if failures or arrived != count:
        raise BenchError(f"{failures} failures, {arrived} of {count} arrived")
    rate = count / seconds
    result = Result("ceiling", figures={"posts_per_s": rate, "messages": count})
    result.checks.append(Check("POSTs/s", rate, "/s", "yardstick", 1.0, 1.0, at_least=True))
    return result


def throughput(ctx: Context) -> Result:
    count = ctx.sizes.throughput
    folder = ctx.folder("throughput")
    db = workload.queue_database(folder / "dispatcher.db", count)
    hooks = [workload.webhook("main", ctx.receiver.url("/ok/main"), CONCURRENCY)]
    config = workload.write_config(folder, db, hooks, CONCURRENCY)
    seconds, cpu = _drain(ctx, config, db, count)
    rate = count / seconds
    result = Result(
        "throughput",
        figures={
            "deliveries_per_s": rate,
            "deliveries": count,
            "daemon_cpu_us_per_delivery": cpu / count * 1e6,
        },
    )
    reference = ("ceiling", ctx.figure("ceiling", "posts_per_s"))
    result.checks.append(rate_at_least("deliveries/s", rate, reference, 0.80))
    return result


def fan_out(ctx: Context) -> Result:
    count, width = ctx.sizes.fan_out_events, ctx.sizes.fan_out_webhooks
    folder = ctx.folder("fan-out")
    db = workload.queue_database(folder / "dispatcher.db", count)
    hooks = [
        workload.webhook(f"w{i:02d}", ctx.receiver.url(f"/ok/w{i:02d}"), FAN_OUT_PER_WEBHOOK)
        for i in range(width)
    ]
    config = workload.write_config(folder, db, hooks, CONCURRENCY)
    total = count * width
    seconds, cpu = _drain(ctx, config, db, total)
    counts = [entry["count"] for entry in ctx.receiver.stats()["paths"].values()]
    rate = total / seconds
    result = Result(
        "fan-out",
        figures={
            "deliveries_per_s": rate,
            "deliveries": total,
            "webhooks": width,
            "daemon_cpu_us_per_delivery": cpu / total * 1e6,
        },
        notes=[f"requests per webhook: min {min(counts)}, max {max(counts)}"],
    )
    reference = ("throughput", ctx.figure("throughput", "deliveries_per_s"))
    result.checks.append(rate_at_least("deliveries/s", rate, reference, 0.90))
    return result


def _isolation_run(ctx: Context, name: str, with_bad: bool) -> tuple[float, dict[str, int]]:
    count = ctx.sizes.isolation
    folder = ctx.folder(name)
    db = workload.queue_database(folder / "dispatcher.db", count)
    hooks = [workload.webhook("healthy", ctx.receiver.url("/ok/healthy"), CONCURRENCY)]
    if with_bad:
        hooks.append(
            workload.webhook(
                "stuck", ctx.receiver.url("/hang"), BROKEN_IN_FLIGHT, timeout=HANG_TIMEOUT
            )
        )
        hooks.append(workload.webhook("broken", ctx.receiver.url("/fail"), BROKEN_IN_FLIGHT))
    # Short backoffs bring retries of the failing deliveries back while the healthy ones are
    # still being sent, so the bad endpoints load the daemon for the whole measurement.
    retry = {"max_retries": 3, "backoff": ["1s", "2s", "4s"]}
    config = workload.write_config(
        folder, db, hooks, CONCURRENCY + 2 * BROKEN_IN_FLIGHT, retry=retry
    )
    seconds, _ = _drain(ctx, config, db, count, webhook="healthy")
    paths = ctx.receiver.stats()["paths"]
    return count / seconds, {path: entry["count"] for path, entry in paths.items()}


def isolation(ctx: Context) -> Result:
    alone, _ = _isolation_run(ctx, "isolation-alone", with_bad=False)
    mixed, requests = _isolation_run(ctx, "isolation-mixed", with_bad=True)
    result = Result(
        "isolation",
        figures={"healthy_per_s": mixed, "alone_per_s": alone},
        notes=[
            "requests meanwhile: "
            + ", ".join(f"{path} {count}" for path, count in sorted(requests.items()))
        ],
    )
    result.checks.append(rate_at_least("healthy deliveries/s", mixed, ("alone", alone), 0.90))
    return result


def _insert(db: Path, row: workload.EventRow) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute(workload.INSERT_EVENT, row)
    finally:
        conn.close()


def _percentile(ordered: list[float], percent: int) -> float:
    return statistics.quantiles(ordered, n=100, method="inclusive")[percent - 1]


def latency(ctx: Context) -> Result:
    seconds = ctx.sizes.latency_seconds
    folder = ctx.folder("latency")
    db = workload.queue_database(folder / "dispatcher.db", 0)
    hooks = [workload.webhook("latency", ctx.receiver.url("/ok/latency"), CONCURRENCY)]
    config = workload.write_config(folder, db, hooks, CONCURRENCY)
    out = folder / "inserted.json"
    with Daemon(config) as daemon, Watch(db) as watch:
        # One event first: the figures are about a running daemon, not its start.
        _insert(db, next(workload.event_rows(1, prefix="evt_warmup")))
        watch.wait_for_succeeded(1, daemon, 30.0)
        ctx.receiver.reset()
        producer = [sys.executable, "-m", "benchmarks.producer", "--db", str(db)]
        producer += ["--rate", str(LATENCY_RATE), "--seconds", str(seconds), "--out", str(out)]
        subprocess.run(producer, check=True, timeout=seconds + 60.0, cwd=PROJECT)
        inserted: dict[str, float] = json.loads(out.read_text())
        watch.wait_for_succeeded(1 + len(inserted), daemon, _deadline(len(inserted)))
        arrivals = ctx.receiver.arrivals()
    missing = [event_id for event_id in inserted if event_id not in arrivals]
    if missing:
        raise BenchError(f"{len(missing)} events never arrived, e.g. {missing[0]}")
    delays = sorted((arrivals[i] - t) * 1000.0 for i, t in inserted.items())
    times = sorted(inserted.values())
    offered = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    p50, p99 = _percentile(delays, 50), _percentile(delays, 99)
    result = Result(
        "latency",
        figures={
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": delays[-1],
            "events": len(delays),
            "offered_per_s": offered,
        },
    )
    result.checks.append(at_most("p50", p50, "ms", 15.0))
    result.checks.append(at_most("p99", p99, "ms", 60.0))
    return result


def backlog(ctx: Context) -> Result:
    count, drain = ctx.sizes.backlog, ctx.sizes.backlog_drain
    folder = ctx.folder("backlog")
    started = time.monotonic()
    path = folder / "dispatcher.db"
    if count >= CACHE_FROM:
        db = workload.cached_queue_database(path, ctx.cache, count)
    else:
        db = workload.queue_database(path, count)
    prepared = time.monotonic() - started
    hooks = [workload.webhook("main", ctx.receiver.url("/ok/backlog"), CONCURRENCY)]
    config = workload.write_config(folder, db, hooks, CONCURRENCY)
    ctx.receiver.reset()
    with Daemon(config) as daemon, Watch(db) as watch:
        watch.wait_for_succeeded(drain, daemon, _deadline(drain))
        rss = daemon.peak_rss_mb()
        drained_at = watch.nth_finished_at(drain)
    first = ctx.receiver.first_arrival("/ok/backlog")
    to_start = first - daemon.started_at
    rate = drain / (drained_at - first)
    result = Result(
        "backlog",
        figures={
            "start_s": to_start,
            "peak_rss_mb": rss,
            "deliveries_per_s": rate,
            "events": count,
            "drained": drain,
            "database_prepared_s": prepared,
        },
    )
    reference = ("throughput", ctx.figure("throughput", "deliveries_per_s"))
    result.checks.append(at_most("time to start", to_start, "s", 2.0))
    result.checks.append(at_most("peak RSS", rss, "MB", 150.0))
    result.checks.append(rate_at_least("deliveries/s", rate, reference, 0.90))
    return result


def idle(ctx: Context) -> Result:
    seconds = ctx.sizes.idle_seconds
    folder = ctx.folder("idle")
    db = workload.queue_database(folder / "dispatcher.db", 0)
    hooks = [workload.webhook("main", ctx.receiver.url("/ok/idle"), CONCURRENCY)]
    config = workload.write_config(folder, db, hooks, CONCURRENCY)
    with Daemon(config) as daemon, Watch(db) as watch:
        # The daemon mirrors its webhooks into the database once it has started.
        watch.wait_for_rows("webhooks", daemon, 30.0)
        time.sleep(IDLE_SETTLE)
        cpu_before, wall_before = daemon.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        cpu_after, wall_after = daemon.cpu_seconds(), time.monotonic()
        daemon.check_alive()
    percent = 100.0 * (cpu_after - cpu_before) / (wall_after - wall_before)
    result = Result("idle", figures={"cpu_percent": percent, "seconds": wall_after - wall_before})
    result.checks.append(at_most("CPU (one core)", percent, "%", 1.0))
    return result


Scenario = Callable[[Context], Result]

# In running order; each names the scenarios whose figures its ratios are taken against.
SCENARIOS: dict[str, tuple[Scenario, tuple[str, ...]]] = {
    "ceiling": (ceiling, ()),
    "throughput": (throughput, ("ceiling",)),
    "fan-out": (fan_out, ("throughput",)),
    "isolation": (isolation, ()),
    "latency": (latency, ()),
    "backlog": (backlog, ("throughput",)),
    "idle": (idle, ()),
}
