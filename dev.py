#!/usr/bin/env python3
"""Set up a virtualenv in .venv and run a project task in it. Standard library only, so it
works on a fresh machine with nothing but Python 3.11+.

    python3 dev.py demo     deliver sample events to a local demo receiver
    python3 dev.py test     lint, type-check and run the whole test suite
    python3 dev.py bench    run the benchmark suite (see benchmarks/README.md)
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed"
PYTEST_NO_TESTS = 5


def run(*command: str | Path) -> int:
    print("+", " ".join(str(c) for c in command), flush=True)
    # The commands are this script's own fixed tool invocations, never outside input.
    return subprocess.call([str(c) for c in command], cwd=ROOT)  # noqa: S603


def ensure_venv() -> None:
    """Create .venv and install the project with its test tools, once per pyproject."""
    # Checked at run time: this file is run by whatever python3 the user has.
    if sys.version_info < (3, 11):  # noqa: UP036
        sys.exit(f"Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = (ROOT / "pyproject.toml").read_bytes()
    if STAMP.exists() and STAMP.read_bytes() == wanted:
        return
    pip = [BIN / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if run(*pip, "--upgrade", "pip") or run(*pip, "-e", ".[test]"):
        sys.exit("installing the project into .venv failed")
    STAMP.write_bytes(wanted)


def demo(args: list[str]) -> int:
    return run(BIN / "webhook-dispatcher", "demo", *args)


def test(args: list[str]) -> int:
    steps = [
        (BIN / "ruff", "format", "--check", "dispatcher", "tests", "benchmarks", "dev.py"),
        (BIN / "ruff", "check", "dispatcher", "tests", "benchmarks", "dev.py"),
        (BIN / "mypy", "dispatcher", "tests", "benchmarks"),
    ]
    for step in steps:
        if run(*step):
            return 1
    code = run(BIN / "python", "-m", "pytest", *args)
    if code == PYTEST_NO_TESTS:
        print("pytest collected no tests: that is a failure here", file=sys.stderr)
        return 1
    return code


def bench(args: list[str]) -> int:
    return run(BIN / "python", "-m", "benchmarks", *args)


TASKS = {"demo": demo, "test": test, "bench": bench}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    return TASKS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
