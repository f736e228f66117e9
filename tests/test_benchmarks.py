"""The benchmark suite: it runs end to end in its small form and reports every scenario.

The figures themselves depend on the machine and its load, so no test judges them; these
tests only hold the suite to producing them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks.cli import selection
from benchmarks.report import at_most, rate_at_least
from benchmarks.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
# Well under the minute the suite is allowed; the small run takes about 20 s on 2 cores.
SMALL_RUN_TIMEOUT = 55


def test_small_run_reports_every_scenario_with_numeric_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "benchmarks", "--small", "--json", str(out)]
    command += ["--workdir", str(tmp_path / "work")]
    # check=False: the exit code is asserted below, with the harness's stderr beside it.
    run = subprocess.run(
        command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=SMALL_RUN_TIMEOUT
    )
    assert run.returncode == 0, run.stderr[-4000:]
    document = json.loads(out.read_text())
    assert set(document["scenarios"]) == set(SCENARIOS)
    for name, entry in document["scenarios"].items():
        assert entry["error"] is None, name
        figures = entry["figures"]
        assert figures, name
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in figures.values()), name
        assert entry["checks"], name
    assert document["machine"]["cores"] >= 1
    header = next(line for line in run.stdout.splitlines() if line.startswith("scenario"))
    assert header.split() == ["scenario", "figure", "value", "target", "ratio", "met"]


def test_a_scenario_brings_the_scenarios_its_ratio_refers_to() -> None:
    assert selection(["fan-out"]) == ["ceiling", "throughput", "fan-out"]
    assert selection(["idle"]) == ["idle"]
    assert selection(None) == list(SCENARIOS)


def test_a_floor_is_met_from_its_bound_up_and_a_limit_up_to_it() -> None:
    assert rate_at_least("rate", 80.0, ("ceiling", 100.0), 0.80).met is True
    assert rate_at_least("rate", 79.0, ("ceiling", 100.0), 0.80).met is False
    assert rate_at_least("rate", 79.0, ("ceiling", None), 0.80).met is None
    assert at_most("p50", 15.0, "ms", 15.0).met is True
    assert at_most("p50", 15.1, "ms", 15.0).met is False
