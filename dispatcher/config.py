"""YAML configuration → frozen dataclasses, with every problem reported at its location.

`load_config` walks the whole file before raising, so an operator sees every mistake at once,
each as `FILE:LINE: KEY.PATH: what is wrong (the bad value; what is valid)`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dispatcher.configparse import (
    Problems,
    Section,
    compose_file,
    parse_duration,
    suggestion,
    to_duration,
    to_text,
)
from dispatcher.configwebhook import (
    WebhookContext,
    custom_headers,
    endpoint_url,
    signing_keys,
)
from dispatcher.errors import ConfigError
from dispatcher.events import EVENT_TYPES, expand_event_patterns, is_known_pattern

__all__ = [
    "Config",
    "HttpConfig",
    "IPNetwork",
    "LoggingConfig",
    "QueueConfig",
    "RetryConfig",
    "Secret",
    "WebhookConfig",
    "load_config",
    "parse_duration",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Secret:
    """One signing secret of a webhook; `key` is the decoded HMAC key. Never printed."""

    key: bytes = field(repr=False)
    expires_at: datetime | None = None


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    url: str
    events: frozenset[str]  # concrete event types, wildcards already expanded
    stores: frozenset[str]  # store ids; "*" means every store
    secrets: tuple[Secret, ...] = field(default=(), repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    max_in_flight: int = 8
    timeout: float = 10.0
    connect_timeout: float = 5.0
    allow_http: bool = False  # effective: the webhook's own setting or http.allow_http
    rate_limit: float = 0.0  # attempts per second; 0 means no limit


@dataclass(frozen=True)
class HttpConfig:
    timeout: float = 10.0
    connect_timeout: float = 5.0
    max_in_flight: int = 256
    max_in_flight_per_endpoint: int = 8
    allow_http: bool = False
    allow_networks: tuple[IPNetwork, ...] = ()
    ca_bundle: Path | None = None
    response_excerpt_bytes: int = 1024


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int = 3
    backoff: tuple[float, ...] = (5.0, 300.0, 1800.0)
    jitter: float = 0.2
    max_retry_after: float = 3600.0


@dataclass(frozen=True)
class QueueConfig:
    poll_interval: float = 0.01
    batch_size: int = 500
    max_payload_bytes: int = 262144


@dataclass(frozen=True)
class CircuitConfig:
    """When an endpoint counts as down: `failures` attempts in a row (0: never), after
    which its deliveries wait `cooldown`, doubling up to `max_cooldown` while it stays down."""

    failures: int = 20
    cooldown: float = 10.0
    max_cooldown: float = 300.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"  # auto | json | console


@dataclass(frozen=True)
class Config:
    path: Path
    database: Path
    webhooks: tuple[WebhookConfig, ...]
    http: HttpConfig = HttpConfig()
    retry: RetryConfig = RetryConfig()
    queue: QueueConfig = QueueConfig()
    logging: LoggingConfig = LoggingConfig()
    circuit: CircuitConfig = CircuitConfig()
    shutdown_grace: float = 10.0
    # A secret or header value written out in the file itself, so the file's permissions
    # matter; values taken from ${ENV} or secret_file do not count.
    has_literal_secret: bool = False


_TOP_KEYS = (
    "database",
    "http",
    "retry",
    "circuit",
    "queue",
    "logging",
    "shutdown_grace",
    "webhooks",
)
_HTTP_KEYS = (
    "timeout",
    "connect_timeout",
    "max_in_flight",
    "max_in_flight_per_endpoint",
    "allow_http",
    "allow_networks",
    "ca_bundle",
    "response_excerpt_bytes",
)
_RETRY_KEYS = ("max_retries", "backoff", "jitter", "max_retry_after")
_QUEUE_KEYS = ("poll_interval", "batch_size", "max_payload_bytes")
_LOGGING_KEYS = ("level", "format")
_CIRCUIT_KEYS = ("failures", "cooldown", "max_cooldown")
_WEBHOOK_KEYS = (
    "name",
    "url",
    "events",
    "stores",
    "secret",
    "secrets",
    "secret_file",
    "headers",
    "max_in_flight",
    "timeout",
    "connect_timeout",
    "allow_http",
    "rate_limit",
)
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")
_WEBHOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
_EVENT_RULE = f"{', '.join(EVENT_TYPES)}; or a wildcard: *, order.*, product.*"


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read and check the YAML file at `path`; raise ConfigError listing every problem.

    `env` (os.environ by default) supplies ${NAME} references and CREDENTIALS_DIRECTORY.
    """
    problems = Problems(str(path))
    root = compose_file(Path(path), problems)
    if root is None:
        raise ConfigError(problems.lines())
    config = _config(Section(problems, root, "", _TOP_KEYS), Path(path).absolute(), env)
    if problems.lines():
        raise ConfigError(problems.lines())
    return config


def _config(top: Section, path: Path, env: Mapping[str, str] | None) -> Config:
    context = WebhookContext(top.problems, os.environ if env is None else env, path.parent)
    if not top.is_mapping:
        return Config(path=path, database=path.parent / "dispatcher.db", webhooks=())
    http = _http(top.section("http", _HTTP_KEYS), context.base)
    webhooks = _webhooks(top, context, http)
    return Config(
        path=path,
        database=_database(top, context.base),
        webhooks=webhooks,
        http=http,
        retry=_retry(top.section("retry", _RETRY_KEYS)),
        queue=_queue(top.section("queue", _QUEUE_KEYS)),
        logging=_logging(top.section("logging", _LOGGING_KEYS)),
        circuit=_circuit(top.section("circuit", _CIRCUIT_KEYS)),
        shutdown_grace=top.duration("shutdown_grace", Config.shutdown_grace, allow_zero=True),
        has_literal_secret=context.literal_secret,
    )


def _circuit(section: Section) -> CircuitConfig:
    default = CircuitConfig()
    return CircuitConfig(
        failures=section.integer("failures", default.failures, low=0, high=10_000),
        cooldown=section.duration("cooldown", default.cooldown),
        max_cooldown=section.duration("max_cooldown", default.max_cooldown),
    )


def _database(top: Section, base: Path) -> Path:
    text = top.text("database")
    if text is None:
        return base / "dispatcher.db"
    if not text.strip():
        top.problems.add(top.entries["database"][1], "database", "empty path (valid: a file path)")
    return base / text


def _http(section: Section, base: Path) -> HttpConfig:
    default = HttpConfig()
    per_endpoint = default.max_in_flight_per_endpoint
    return HttpConfig(
        timeout=section.duration("timeout", default.timeout),
        connect_timeout=section.duration("connect_timeout", default.connect_timeout),
        max_in_flight=section.integer("max_in_flight", default.max_in_flight, low=1),
        max_in_flight_per_endpoint=section.integer("max_in_flight_per_endpoint", per_endpoint, 1),
        allow_http=section.boolean("allow_http", default.allow_http),
        allow_networks=_networks(section),
        ca_bundle=_ca_bundle(section, base),
        response_excerpt_bytes=section.integer(
            "response_excerpt_bytes", default.response_excerpt_bytes, low=0, high=65536
        ),
    )


def _networks(section: Section) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for node, path in section.items("allow_networks"):
        text = to_text(section.problems, node, path)
        if text is None:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            valid = "an address or CIDR block, like 10.0.0.0/8 or fd00::/8"
            section.problems.add(node, path, f"not a network ({text!r}; valid: {valid})")
    return tuple(networks)


def _ca_bundle(section: Section, base: Path) -> Path | None:
    text = section.text("ca_bundle")
    if text is None:
        return None
    bundle = base / text
    if not bundle.is_file():
        node = section.entries["ca_bundle"][1]
        valid = "an existing PEM file of CA certificates, relative to the config file's folder"
        section.problems.add(
            node, section.path_of("ca_bundle"), f"no such file ({bundle}; {valid})"
        )
    return bundle


def _retry(section: Section) -> RetryConfig:
    default = RetryConfig()
    return RetryConfig(
        max_retries=section.integer("max_retries", default.max_retries, low=0, high=20),
        backoff=_backoff(section, default.backoff),
        jitter=section.number("jitter", default.jitter, low=0.0, high=0.5),
        max_retry_after=section.duration("max_retry_after", default.max_retry_after),
    )


def _backoff(section: Section, default: tuple[float, ...]) -> tuple[float, ...]:
    if section.get("backoff") is None:
        return default
    valid = "one or more durations, like [5s, 5m, 30m]"
    items = section.nonempty_items("backoff", valid)
    delays = [to_duration(section.problems, node, path) for node, path in items]
    good = [delay for delay in delays if delay is not None]
    return tuple(good) if good and len(good) == len(delays) else default


def _queue(section: Section) -> QueueConfig:
    default = QueueConfig()
    return QueueConfig(
        poll_interval=section.duration("poll_interval", default.poll_interval),
        batch_size=section.integer("batch_size", default.batch_size, low=1, high=10000),
        max_payload_bytes=section.integer("max_payload_bytes", default.max_payload_bytes, low=1),
    )


def _logging(section: Section) -> LoggingConfig:
    default = LoggingConfig()
    return LoggingConfig(
        level=section.choice("level", default.level, _LOG_LEVELS),
        format=section.choice("format", default.format, _LOG_FORMATS),
    )


def _webhooks(top: Section, context: WebhookContext, http: HttpConfig) -> tuple[WebhookConfig, ...]:
    webhooks: list[WebhookConfig] = []
    for node, path in top.items("webhooks", "a list of webhooks, each a mapping"):
        section = Section(context.problems, node, path, _WEBHOOK_KEYS)
        if section.is_mapping:
            webhooks.append(_webhook(section, context, http))
    return tuple(webhooks)


def _webhook(section: Section, context: WebhookContext, http: HttpConfig) -> WebhookConfig:
    # Either switch allows plain http://, so a webhook cannot undo the global allowance.
    allow_http = section.boolean("allow_http", default=False) or http.allow_http
    keys = signing_keys(section, context)
    return WebhookConfig(
        name=_webhook_name(section, context),
        url=endpoint_url(section, allow_http),
        events=_events(section),
        stores=_stores(section),
        secrets=tuple(Secret(key, expires_at) for key, expires_at in keys),
        headers=custom_headers(section, context),
        max_in_flight=section.integer("max_in_flight", http.max_in_flight_per_endpoint, low=1),
        timeout=section.duration("timeout", http.timeout),
        connect_timeout=section.duration("connect_timeout", http.connect_timeout),
        allow_http=allow_http,
        rate_limit=section.number("rate_limit", 0.0, low=0.0, high=100_000.0),
    )


def _webhook_name(section: Section, context: WebhookContext) -> str:
    node = section.required("name", _NAME_RULE)
    path = section.path_of("name")
    name = None if node is None else to_text(context.problems, node, path)
    if node is None or name is None:
        return ""
    first = context.first_lines.get(name)
    if not _WEBHOOK_NAME.fullmatch(name):
        context.problems.add(
            node, path, f"not a valid webhook name ({name!r}; valid: {_NAME_RULE})"
        )
    elif first is not None:
        valid = "valid: a name no other webhook uses"
        context.problems.add(
            node, path, f"duplicate webhook name {name!r} (first at line {first}; {valid})"
        )
    else:
        context.first_lines[name] = node.start_mark.line + 1
    return name


def _events(section: Section) -> frozenset[str]:
    patterns: list[str] = []
    valid = "one or more event types, or a wildcard like order.*"
    for node, path in section.nonempty_items("events", valid):
        pattern = to_text(section.problems, node, path)
        if pattern is None:
            continue
        if is_known_pattern(pattern):
            patterns.append(pattern)
        else:
            hint = suggestion(pattern, EVENT_TYPES)
            message = f"unknown event type {pattern!r} ({hint}valid: {_EVENT_RULE})"
            section.problems.add(node, path, message)
    return frozenset(expand_event_patterns(patterns))


def _stores(section: Section) -> frozenset[str]:
    stores: set[str] = set()
    valid = "one or more store ids, or '*' for every store"
    for node, path in section.nonempty_items("stores", valid):
        store = to_text(section.problems, node, path)
        if store is not None and not store.strip():
            section.problems.add(node, path, f"empty store id (valid: {valid})")
        elif store is not None:
            stores.add(store)
    return frozenset(stores)
