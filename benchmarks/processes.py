"""The processes a benchmark runs: the receiver, the daemon under test, and what /proc says
about them.

Every wait here has a deadline; a process that outlives its scenario is terminated, then
killed, so a failed run never leaves a daemon or a receiver behind.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

# The harness's helpers run as `python -m benchmarks.<module>` from the project folder,
# which need not be the caller's working directory.
PROJECT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 30.0
RECEIVER_START_TIMEOUT = 15.0
LOG_TAIL_BYTES = 2000


class BenchError(Exception):
    """A scenario could not produce its figures (a process died, a deadline passed)."""


def _terminate(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


class ReceiverProcess:
    """The harness's handle on `python -m benchmarks.receiver`."""

    def __init__(self, max_seconds: float) -> None:
        self._max_seconds = max_seconds
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.receiver", "--max-seconds", str(self._max_seconds)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=PROJECT,
        )
        self.port = self._read_port(self._proc)

    @staticmethod
    def _read_port(proc: subprocess.Popen[str]) -> int:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], RECEIVER_START_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            _terminate(proc, STOP_TIMEOUT)
            raise BenchError(f"the receiver did not report its port (got {line!r})")
        return int(line.split()[1])

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc, STOP_TIMEOUT)
            self._proc = None

    def __enter__(self) -> ReceiverProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _call(self, method: str, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        return json.loads(body) if body else None

    def reset(self) -> None:
        self._call("POST", "/reset")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def count(self, path: str) -> int:
        entry = self.stats()["paths"].get(path)
        return int(entry["count"]) if entry else 0

    def first_arrival(self, path: str) -> float:
        entry = self.stats()["paths"].get(path)
        if not entry:
            raise BenchError(f"nothing arrived at {path}")
        return float(entry["first"])

    def arrivals(self) -> dict[str, float]:
        result: dict[str, float] = self._call("GET", "/arrivals")
        return result

    def wait_for_total(self, total: int, timeout: float, interval: float = 0.02) -> None:
        """Wait until `total` requests arrived in all, across every path."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / interval) + 1):
            if self.stats()["total"] >= total:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(interval)
        raise BenchError(f"the receiver got {self.stats()['total']} requests, wanted {total}")


class Daemon:
    """`python -m dispatcher run` as a subprocess, its stderr kept in a file beside the config.

    `started_at` is the wall-clock time just before the process was created: the start of
    every "time from process start" figure.
    """

    def __init__(self, config: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.log = config.with_name("daemon.log")
        self._extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the daemon was not started"
        return self._proc.pid

    def start(self) -> None:
        command = [sys.executable, *self._extra_args, "-m", "dispatcher", "run", "-c"]
        with self.log.open("wb") as log:
            self.started_at = time.time()
            self._proc = subprocess.Popen(
                [*command, str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.config.parent,
            )

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise BenchError(
                f"the daemon exited with code {self._proc.returncode}: {self.log_tail()}"
            )

    def log_tail(self) -> str:
        try:
            data = self.log.read_bytes()[-LOG_TAIL_BYTES:]
        except OSError:
            return "(no log)"
        return data.decode("utf-8", errors="replace").strip() or "(empty log)"

    def stop(self) -> int:
        """SIGTERM (the graceful stop), bounded; returns the exit code."""
        if self._proc is None:
            return 0
        self.returncode = _terminate(self._proc, STOP_TIMEOUT)
        self._proc = None
        return self.returncode

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        code = self.stop()
        # SIGTERM is the graceful stop: anything but a clean exit is a finding of its own,
        # unless the scenario is already failing for another reason.
        if code != 0 and exc is None:
            raise BenchError(f"the daemon exited with code {code} on SIGTERM: {self.log_tail()}")

    def peak_rss_mb(self) -> float:
        """The resident set's high-water mark so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        raise BenchError("no VmHWM line in /proc/PID/status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        # The command name (field 2) may hold spaces, so count fields after its ')'.
        fields = text[text.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / os.sysconf("SC_CLK_TCK")
