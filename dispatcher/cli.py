"""The command line: `webhook-dispatcher COMMAND -c CONFIG ...`.

Every error reaches the user as one line on stderr and an exit code: 0 for success, 1 for
a failure while running, 2 for a mistake in the arguments or the configuration. The
traceback only with --debug.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiosqlite

from dispatcher import __version__, admin, clock, demo, logs, maintenance, service, signing, tables
from dispatcher.config import Config, load_config, parse_duration
from dispatcher.errors import ConfigError, DispatcherError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_CONFIG = "/etc/webhook-dispatcher/config.yaml"
WITH_JSON = frozenset(
    {"check-config", "events", "attempts", "status", "enqueue", "redeliver", "prune"}
)

T = TypeVar("T")
Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        result: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except admin.UsageError as exc:
        return _fail(args, exc, EXIT_USAGE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (`| head`, say) went away; Python would otherwise complain again when
        # it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except DispatcherError as exc:
        return _fail(args, exc, EXIT_ERROR)
    except Exception as exc:
        # Anything unforeseen still gets the one-line treatment; --debug shows where it was.
        return _fail(args, exc, EXIT_ERROR, f"{type(exc).__name__}: ")
    return result


def _fail(args: argparse.Namespace, exc: Exception, code: int, kind: str = "") -> int:
    if args.debug:
        traceback.print_exception(exc)
    # A message quoting a database value or a peer's answer may span lines; keep it to one.
    message = " ".join(str(exc).splitlines())
    print(f"error: {kind}{message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="webhook-dispatcher", description="Deliver shop events to webhooks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(debug=False, json=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add(sub, "run", _run, "run the daemon in the foreground")
    _add(sub, "check-config", _check_config, "validate the configuration")
    enqueue = _add(sub, "enqueue", _enqueue, "insert one event into the queue, print its id")
    enqueue.add_argument("--type", required=True, help="event type, e.g. order.created")
    enqueue.add_argument("--store", required=True, help="store id")
    enqueue.add_argument("--data", required=True, help="JSON object, or @FILE to read one")
    enqueue.add_argument("--id", help="event id (default: generated)")
    log = _add(sub, "events", _events, "the event log: one row per delivery, newest first")
    log.add_argument("--webhook", help="only this webhook's deliveries")
    log.add_argument("--status", help="pending, in_flight, succeeded, failed, queued, rejected")
    log.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    tries = _add(sub, "attempts", _attempts, "every attempt of one event at every endpoint")
    tries.add_argument("event_id")
    _add(sub, "status", _status, "queue depth, deliveries by state, endpoint health")
    _redeliver_arguments(_add(sub, "redeliver", _redeliver, "retry failed deliveries afresh"))
    prune = _add(sub, "prune", _prune, "delete finished events past retention")
    prune.add_argument("--older-than", required=True, help="duration, e.g. 30d")
    gen = sub.add_parser("gen-secret", help="print a new whsec_ signing secret")
    gen.set_defaults(handler=_gen_secret)
    sample = sub.add_parser("demo", help="deliver sample events to a local demo receiver")
    sample.add_argument("--dir", type=Path, help="where to keep the demo files (default: temp)")
    sample.set_defaults(handler=_demo)
    return parser


def _add(
    sub: argparse._SubParsersAction[_Parser], name: str, handler: Handler, text: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text, description=text)
    parser.add_argument(
        "-c", "--config", type=Path, default=Path(DEFAULT_CONFIG), help="configuration file"
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    if name in WITH_JSON:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=handler)
    return parser


def _redeliver_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Every filter given must hold. A redelivered delivery gets a fresh retry budget; its "
        "attempts go on numbering after the old ones."
    )
    parser.add_argument("--delivery", type=int, action="append", default=[], help="delivery id")
    parser.add_argument("--event", help="the failed deliveries of this event")
    parser.add_argument("--webhook", help="the failed deliveries of this webhook")
    moment = "ISO 8601 time (UTC unless it says otherwise), or a duration ago like 2h"
    parser.add_argument("--since", help=f"events created at or after: {moment}")
    parser.add_argument("--until", help=f"events created before: {moment}")


def _with_db(
    args: argparse.Namespace, work: Callable[[aiosqlite.Connection, Config], Awaitable[T]]
) -> T:
    """Run `work` on the configured database, with logs kept off stdout (which carries the
    command's output) and quiet unless --debug."""
    config = load_config(args.config)
    logs.configure("debug" if args.debug else "warning", "auto", sys.stderr)

    async def go() -> T:
        conn = await admin.open_db(config.database)
        try:
            return await work(conn, config)
        finally:
            await conn.close()

    return asyncio.run(go())


def _emit(args: argparse.Namespace, value: Any, text: str) -> int:
    print(admin.to_json(value) if args.json else text)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    level = "debug" if args.debug else config.logging.level
    logs.configure(level, config.logging.format)
    service.run(config)
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if not args.json:
            raise
        print(admin.to_json({"ok": False, "problems": exc.problems}))
        return EXIT_USAGE
    summary = {
        "ok": True,
        "webhooks": [w.name for w in config.webhooks],
        "database": str(config.database),
    }
    text = f"{args.config}: ok ({len(config.webhooks)} webhooks, database {config.database})"
    return _emit(args, summary, text)


def _enqueue(args: argparse.Namespace) -> int:
    data = _read_data(args.data)

    async def work(conn: aiosqlite.Connection, config: Config) -> str:
        return await admin.enqueue(
            conn,
            args.type,
            args.store,
            data,
            event_id=args.id,
            max_payload_bytes=config.queue.max_payload_bytes,
        )

    event_id = _with_db(args, work)
    return _emit(args, {"id": event_id}, event_id)


def _read_data(text: str) -> str:
    if not text.startswith("@"):
        return text
    path = text[1:]
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise admin.UsageError(f"--data: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise admin.UsageError(f"--data: {path} is not UTF-8 text ({exc.reason})") from exc


def _events(args: argparse.Namespace) -> int:
    async def work(conn: aiosqlite.Connection, config: Config) -> list[admin.Row]:
        if args.webhook is not None:
            known = {w.name for w in config.webhooks} | await admin.webhook_names(conn)
            if args.webhook not in known:
                valid = ", ".join(sorted(known)) or "none"
                raise admin.UsageError(
                    f"--webhook: unknown webhook {args.webhook!r} (valid: {valid})"
                )
        return await admin.event_log(conn, args.webhook, args.status, args.limit)

    rows = _with_db(args, work)
    columns = ("created_at", "event_id", "type", "store_id", "webhook", "delivery_id", "state",
               "attempts", "last_error")  # fmt: skip
    return _emit(args, rows, tables.render(rows, columns, "no events match"))


def _attempts(args: argparse.Namespace) -> int:
    rows = _with_db(args, lambda conn, _: admin.attempts(conn, args.event_id))
    columns = ("webhook", "delivery_id", "number", "started_at", "status_code", "error_kind",
               "error", "duration_ms", "manual")  # fmt: skip
    return _emit(args, rows, tables.render(rows, columns, "no attempts yet"))


def _status(args: argparse.Namespace) -> int:
    report = _with_db(args, lambda conn, _: admin.status(conn, clock.now()))
    return _emit(args, report, _status_text(report))


def _status_text(report: dict[str, Any]) -> str:
    deliveries = report["deliveries"]
    head = [
        f"queued events:   {report['queued_events']}",
        f"rejected events: {report['rejected_events']}",
        "deliveries:      " + ", ".join(f"{k} {v}" for k, v in deliveries.items()),
        "",
    ]
    rows = [
        {"webhook": name, **entry, "success_last_hour": _percent(entry["success_rate_last_hour"])}
        for name, entry in report["webhooks"].items()
    ]
    columns = ("webhook", "active", "pending", "in_flight", "succeeded", "failed",
               "attempts_last_hour", "success_last_hour", "last_attempt_at",
               "circuit_open_until")  # fmt: skip
    return "\n".join([*head, tables.render(rows, columns, "no webhooks yet")])


def _percent(rate: float | None) -> str | None:
    return None if rate is None else f"{rate * 100:.1f}%"


def _redeliver(args: argparse.Namespace) -> int:
    now = clock.now()
    scope = maintenance.RedeliverScope(
        delivery_ids=tuple(args.delivery),
        event_id=args.event,
        webhook=args.webhook,
        since=_moment("--since", args.since, now),
        until=_moment("--until", args.until, now),
    )

    async def work(conn: aiosqlite.Connection, config: Config) -> int:
        configured = [w.name for w in config.webhooks]
        return await maintenance.redeliver(conn, scope, now, configured)

    count = _with_db(args, work)
    return _emit(args, {"redelivered": count}, f"{count} deliveries put back in the queue")


def _moment(flag: str, text: str | None, now: datetime) -> datetime | None:
    """An ISO 8601 time, taken as UTC when it names no zone (every stored time is UTC), or a
    duration before `now`. The time is tried first, so that a compact date like 20260131
    is never read as that many seconds."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        pass
    else:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        valid = "an ISO 8601 time like 2026-01-31T12:00:00Z, or a duration ago like 2h"
        raise admin.UsageError(f"{flag}: not a time: {text!r} (valid: {valid})") from exc


def _prune(args: argparse.Namespace) -> int:
    try:
        seconds = parse_duration(args.older_than)
    except ValueError as exc:
        raise admin.UsageError(f"--older-than: {exc}") from exc
    pruned = _with_db(args, lambda conn, _: maintenance.prune(conn, seconds, clock.now()))
    text = (
        f"{pruned.events} events pruned, with {pruned.deliveries} deliveries and "
        f"{pruned.attempts} attempts"
    )
    return _emit(args, dataclasses.asdict(pruned), text)


def _gen_secret(args: argparse.Namespace) -> int:
    print(signing.generate_secret())
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    return asyncio.run(demo.main(args.dir))


if __name__ == "__main__":
    sys.exit(main())
