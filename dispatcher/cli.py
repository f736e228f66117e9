"""The command line: `webhook-dispatcher COMMAND -c CONFIG ...`.

Every error reaches the user as one line on stderr and a non-zero exit code; the
traceback only with --debug.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from dispatcher import __version__, admin, clock, logs, service, signing, tables
from dispatcher.config import Config, load_config, parse_duration
from dispatcher.errors import ConfigError, DispatcherError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_CONFIG = "/etc/webhook-dispatcher/config.yaml"

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        result: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except admin.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DispatcherError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhook-dispatcher", description="Deliver shop events to webhooks."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(debug=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add(sub, "run", _run, "run the daemon in the foreground")
    _add(sub, "check-config", _check_config, "validate the configuration")
    enqueue = _add(sub, "enqueue", _enqueue, "insert one event into the queue")
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
    again = _add(sub, "redeliver", _redeliver, "put failed deliveries back in the queue")
    again.add_argument("--delivery", type=int, action="append", default=[], help="delivery id")
    again.add_argument("--event", help="every failed delivery of this event")
    again.add_argument("--webhook", help="every failed delivery of this webhook")
    again.add_argument("--since", help="with --webhook: events created at or after (ISO 8601)")
    again.add_argument("--until", help="with --webhook: events created before (ISO 8601)")
    prune = _add(sub, "prune", _prune, "delete finished events past retention")
    prune.add_argument("--older-than", required=True, help="duration, e.g. 30d")
    gen = sub.add_parser("gen-secret", help="print a new whsec_ signing secret")
    gen.set_defaults(handler=_gen_secret)
    demo = sub.add_parser("demo", help="deliver sample events to a local demo receiver")
    demo.add_argument("--dir", type=Path, help="where to keep the demo files (default: temp)")
    demo.set_defaults(handler=_demo)
    return parser


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler, text: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text, description=text)
    parser.add_argument(
        "-c", "--config", type=Path, default=Path(DEFAULT_CONFIG), help="configuration file"
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    if name in {"events", "attempts", "status", "enqueue", "redeliver", "prune"}:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=handler)
    return parser


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _with_db(args: argparse.Namespace, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    config = _config(args)

    async def go() -> Any:
        conn = await admin.open_db(config.database)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def _emit(args: argparse.Namespace, value: Any, text: str) -> int:
    print(admin.to_json(value) if args.json else text)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    level = "debug" if args.debug else config.logging.level
    logs.configure(level, config.logging.format)
    asyncio.run(service.serve(config))
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"{args.config}: ok ({len(config.webhooks)} webhooks, database {config.database})")
    return EXIT_OK


def _enqueue(args: argparse.Namespace) -> int:
    data = args.data
    if data.startswith("@"):
        try:
            data = Path(data[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise admin.UsageError(f"--data: cannot read {data[1:]}: {exc.strerror}") from exc
    event_id = _with_db(args, lambda c: admin.enqueue(c, args.type, args.store, data, args.id))
    return _emit(args, {"id": event_id}, event_id)


def _events(args: argparse.Namespace) -> int:
    rows = _with_db(args, lambda c: admin.event_log(c, args.webhook, args.status, args.limit))
    columns = ("created_at", "event_id", "type", "store_id", "webhook", "state", "attempts",
               "last_error")
    return _emit(args, rows, tables.render(rows, columns))


def _attempts(args: argparse.Namespace) -> int:
    rows = _with_db(args, lambda c: admin.attempts(c, args.event_id))
    columns = ("webhook", "number", "started_at", "status_code", "error_kind", "error",
               "duration_ms", "manual")
    return _emit(args, rows, tables.render(rows, columns))


def _status(args: argparse.Namespace) -> int:
    report = _with_db(args, lambda c: admin.status(c, clock.now()))
    return _emit(args, report, _status_text(report))


def _status_text(report: dict[str, Any]) -> str:
    deliveries = report["deliveries"]
    head = [
        f"queued events:   {report['queued_events']}",
        f"rejected events: {report['rejected_events']}",
        "deliveries:      " + ", ".join(f"{k} {v}" for k, v in deliveries.items()),
        "",
    ]
    rows = [{"webhook": name, **entry} for name, entry in report["webhooks"].items()]
    columns = ("webhook", "active", "pending", "in_flight", "succeeded", "failed",
               "attempts_last_hour", "success_rate_last_hour", "last_attempt_at")
    return "\n".join(head) + tables.render(rows, columns)


def _redeliver(args: argparse.Namespace) -> int:
    if (args.since or args.until) and not args.webhook:
        raise admin.UsageError("--since and --until go with --webhook")
    scope = admin.RedeliverScope(
        delivery_ids=tuple(args.delivery),
        event_id=args.event,
        webhook=args.webhook,
        since=_moment("--since", args.since),
        until=_moment("--until", args.until),
    )
    count = _with_db(args, lambda c: admin.redeliver(c, scope, clock.now()))
    return _emit(args, {"redelivered": count}, f"{count} deliveries put back in the queue")


def _moment(flag: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return clock.parse_iso(text)
    except ValueError as exc:
        raise admin.UsageError(f"{flag}: not an ISO 8601 time: {text!r}") from exc


def _prune(args: argparse.Namespace) -> int:
    try:
        seconds = parse_duration(args.older_than)
    except ValueError as exc:
        raise admin.UsageError(f"--older-than: {exc}") from exc
    count = _with_db(args, lambda c: admin.prune(c, seconds, clock.now()))
    return _emit(args, {"pruned_events": count}, f"{count} events pruned")


def _gen_secret(args: argparse.Namespace) -> int:
    print(signing.generate_secret())
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from dispatcher import demo

    return asyncio.run(demo.main(args.dir))


if __name__ == "__main__":
    sys.exit(main())
