"""The command line: pick scenarios, run them against one receiver, print and save results."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks import report
from benchmarks.processes import ReceiverProcess
from benchmarks.scenarios import FULL, SCENARIOS, SMALL, Context
from dispatcher import logs, service

CACHE = Path(__file__).resolve().parent / "results" / "cache"
# The receiver exits on its own after this long, should the harness die without stopping it.
RECEIVER_LIFETIME = 4 * 3600.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Measure the daemon against a local receiver."
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run this scenario (repeatable; default: all). Scenarios a ratio needs run too.",
    )
    parser.add_argument("--small", action="store_true", help="a few hundred events each")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each scenario N times, keep the best",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--workdir", type=Path, help="keep databases and logs here")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where big databases live")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the daemon and of the ceiling client alike (default: asyncio)",
    )
    return parser


def selection(wanted: Sequence[str] | None) -> list[str]:
    """The scenarios to run in their fixed order, with the ones their ratios refer to."""
    chosen = set(wanted or SCENARIOS)
    # One pass per scenario reaches the end of any chain (fan-out -> throughput -> ceiling).
    for _ in range(len(SCENARIOS)):
        chosen |= {need for name in chosen for need in SCENARIOS[name][1]}
    return [name for name in SCENARIOS if name in chosen]


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="dispatcher-bench-") as folder:
        yield Path(folder)


def _once(name: str, ctx: Context) -> report.Result:
    scenario, _ = SCENARIOS[name]
    started = time.monotonic()
    # Other work on the machine skews every figure; the load says whether there was any.
    load = os.getloadavg()[0]
    try:
        result = scenario(ctx)
    # One scenario failing must not hide the figures of the others.
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        result = report.Result(name, error=f"{type(exc).__name__}: {exc}")
    result.seconds = time.monotonic() - started
    result.notes.append(f"load average (1 min) before: {load:.2f}")
    return result


def run(names: list[str], ctx: Context, repeat: int) -> list[report.Result]:
    results = []
    for name in names:
        result = report.best([_once(name, ctx) for _ in range(max(1, repeat))])
        ctx.done[name] = result
        results.append(result)
        print(report.figures_text(result), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The harness creates databases with the daemon's own code; its routine log lines
    # would only interleave with the figures.
    logs.configure("warning", "json", sys.stderr)
    names = selection(args.scenario)
    # The daemons inherit this, and the ceiling client reads it too: both sides of every
    # ratio run on the same event loop.
    os.environ[service.LOOP_VARIABLE] = args.loop
    facts = {**report.machine(), "event_loop": args.loop}
    print(", ".join(f"{key} {value}" for key, value in facts.items()), flush=True)
    with _workdir(args.workdir) as folder, ReceiverProcess(RECEIVER_LIFETIME) as receiver:
        ctx = Context(SMALL if args.small else FULL, folder, args.cache, receiver)
        results = run(names, ctx, args.repeat)
    print()
    print(report.table(results))
    print("machine: " + ", ".join(f"{key} {value}" for key, value in facts.items()))
    if args.json:
        report.write_json(args.json, facts, args.small, results)
    return 1 if any(r.error for r in results) else 0
