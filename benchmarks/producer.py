"""A producer inserting events at a steady rate, the way the shop platform does: plain SQL,
one transaction per event.

    python -m benchmarks.producer --db PATH --rate 200 --seconds 10 --out FILE

Writes to FILE a JSON object mapping each event id to the unix time its insert committed,
which the latency scenario pairs with the receiver's arrival times.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

from benchmarks.workload import INSERT_EVENT, event_rows


def produce(db: Path, rate: float, seconds: float) -> dict[str, float]:
    count = max(1, round(rate * seconds))
    # The daemon writes to the same file; waiting up to 10 s for its lock is what a real
    # producer's driver would do too.
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    conn.execute("PRAGMA synchronous = NORMAL")
    inserted: dict[str, float] = {}
    start = time.monotonic()
    try:
        for number, row in enumerate(event_rows(count, prefix="evt_latency")):
            # A fixed schedule rather than a fixed gap: a slow insert is caught up on, so the
            # offered rate stays what was asked for.
            delay = start + number / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.execute(INSERT_EVENT, row)
            inserted[row[0]] = time.time()
    finally:
        conn.close()
    return inserted


def main() -> int:
    parser = argparse.ArgumentParser(description="insert events at a steady rate")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    inserted = produce(args.db, args.rate, args.seconds)
    args.out.write_text(json.dumps(inserted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
