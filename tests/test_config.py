"""dispatcher.config: loading the YAML file, and reporting every problem with its location."""

from __future__ import annotations

import base64
import ipaddress
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dispatcher.config import Config, load_config, parse_duration
from dispatcher.errors import ConfigError
from dispatcher.events import EVENT_TYPES

REPO = Path(__file__).resolve().parent.parent

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OTHER_KEY = bytes(range(100, 124))
OTHER_SECRET = "whsec_" + base64.b64encode(OTHER_KEY).decode()


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(path: Path, env: dict[str, str] | None = None) -> Config:
    return load_config(path, {} if env is None else env)


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    """The reported problems with the file name cut off, so that each starts at the line."""
    with pytest.raises(ConfigError) as caught:
        load(path, env)
    prefix = f"{path}:"
    assert all(line.startswith(prefix) for line in caught.value.problems)
    return [line.removeprefix(prefix) for line in caught.value.problems]


def webhook_file(tmp_path: Path, extra: str = "", url: str = "https://erp.example.com/h") -> Path:
    """A file with one valid webhook, plus `extra` lines indented into that webhook."""
    lines = [
        "webhooks:",
        "  - name: erp",
        f"    url: {url}",
        "    events: [order.created]",
        "    stores: [store-1]",
    ]
    lines += ["    " + line for line in textwrap.dedent(extra).strip("\n").splitlines()]
    return write(tmp_path, "\n".join(lines) + "\n")


# --- the file itself ---------------------------------------------------------------------------


def test_missing_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.problems == [f"{path}: cannot read: No such file or directory"]


def test_directory_instead_of_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert caught.value.problems == [f"{tmp_path}: cannot read: Is a directory"]


def test_file_that_is_not_utf8_is_reported_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"database: \xff\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.problems == [f"{path}: cannot read: not UTF-8 text (bad byte at offset 10)"]


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  timeout: 10s\n  connect_timeout: [5s\nqueue: {}\n")
    assert problems(path) == [
        "4:6: invalid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence at "
        "line 3)"
    ]


def test_empty_file_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing but a comment\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.problems == [
        f"{path}: the file holds no settings (valid: a mapping of keys)"
    ]


def test_top_level_that_is_not_a_mapping_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "- webhooks\n- http\n")
    [found] = problems(path)
    assert found.startswith(
        "1: (top level): not a mapping (a list; valid: keys circuit, database, http"
    )


# --- defaults and top-level keys -----------------------------------------------------------------


def test_file_without_webhooks_loads_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "logging:\n  level: debug\n")
    config = load(path)
    assert config.webhooks == ()
    assert config.database == tmp_path / "dispatcher.db"
    assert config.path == path
    assert config.retry.backoff == (5.0, 300.0, 1800.0)
    assert config.logging.level == "debug"
    assert not config.has_literal_secret


def test_empty_webhooks_list_is_allowed(tmp_path: Path) -> None:
    assert load(write(tmp_path, "webhooks: []\n")).webhooks == ()


def test_webhooks_that_is_not_a_list_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "webhooks:\n  name: erp\n")
    assert problems(path) == [
        "2: webhooks: not a list (a mapping; valid: a list of webhooks, each a mapping)"
    ]


def test_relative_database_path_is_taken_from_the_config_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "database: data/queue.db\n")
    assert load(path).database == tmp_path / "data" / "queue.db"


def test_absolute_database_path_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "database: /var/lib/wd/dispatcher.db\n")
    assert load(path).database == Path("/var/lib/wd/dispatcher.db")


def test_every_section_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        http:
          timeout: 30s
          connect_timeout: 1500ms
          max_in_flight: 64
          max_in_flight_per_endpoint: 2
          allow_http: true
          allow_networks: [10.1.2.3/8, "fd00::/8"]
          response_excerpt_bytes: 0
        retry:
          max_retries: 5
          backoff: [1s, 2m]
          jitter: 0
          max_retry_after: 2h
        queue:
          poll_interval: 0.5
          batch_size: 10
          max_payload_bytes: 1000
        logging:
          level: warning
          format: json
        shutdown_grace: 0
        """,
    )
    config = load(path)
    assert (config.http.timeout, config.http.connect_timeout) == (30.0, 1.5)
    assert (config.http.max_in_flight, config.http.max_in_flight_per_endpoint) == (64, 2)
    assert config.http.allow_http
    assert config.http.allow_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert config.http.response_excerpt_bytes == 0
    assert config.retry.max_retries == 5
    assert config.retry.backoff == (1.0, 120.0)
    assert config.retry.jitter == 0.0
    assert config.retry.max_retry_after == 7200.0
    assert (config.queue.poll_interval, config.queue.batch_size) == (0.5, 10)
    assert config.queue.max_payload_bytes == 1000
    assert (config.logging.level, config.logging.format) == ("warning", "json")
    assert config.shutdown_grace == 0.0


# --- keys and types ------------------------------------------------------------------------------


def test_unknown_top_level_key_lists_the_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "databse: x.db\n")
    valid = "circuit, database, http, logging, queue, retry, shutdown_grace, webhooks"
    assert problems(path) == [f"1: databse: unknown key (did you mean database? valid: {valid})"]


def test_unknown_nested_key_is_named_by_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "retry:\n  max_retries: 2\n  backof: [1s]\n")
    [found] = problems(path)
    assert found.startswith("3: retry.backof: unknown key (did you mean backoff? valid: backoff, ")


def test_unknown_webhook_key_is_reported(tmp_path: Path) -> None:
    path = webhook_file(tmp_path, "sceret: x\n")
    [found] = problems(path)
    assert found.startswith("6: webhooks[0].sceret: unknown key (did you mean secret? valid: ")


def test_duplicate_key_names_the_first_line(tmp_path: Path) -> None:
    path = write(tmp_path, "queue:\n  batch_size: 5\n  batch_size: 6\n")
    assert problems(path) == ["3: queue.batch_size: duplicate key (first at line 2)"]


def test_section_that_is_not_a_mapping_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "logging: debug\n")
    assert problems(path) == [
        "1: logging: not a mapping ('debug'; valid: keys format, level)",
    ]


def test_quoted_number_is_not_an_integer(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  max_in_flight: '8'\n")
    assert problems(path) == ["2: http.max_in_flight: not a whole number ('8'; valid: 1 or more)"]


def test_fraction_is_not_an_integer(tmp_path: Path) -> None:
    path = write(tmp_path, "queue:\n  batch_size: 2.5\n")
    assert problems(path) == [
        "2: queue.batch_size: not a whole number (a number 2.5; valid: 1 to 10000)"
    ]


@pytest.mark.parametrize("value", ["'true'", "1", "on-ish"])
def test_boolean_must_be_a_real_yaml_boolean(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"http:\n  allow_http: {value}\n")
    [found] = problems(path)
    assert found.startswith("2: http.allow_http: not a boolean (")
    assert found.endswith("; valid: true or false, unquoted)")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout", "10 sec"),
        ("timeout", "5x"),
        ("connect_timeout", "[5s]"),
        ("timeout", "true"),
        ("timeout", ".inf"),
    ],
)
def test_bad_duration_is_reported(tmp_path: Path, key: str, value: str) -> None:
    path = write(tmp_path, f"http:\n  {key}: {value}\n")
    [found] = problems(path)
    assert found.startswith(f"2: http.{key}: not a duration (")
    assert found.endswith(
        "valid: seconds as a number, or a number with ms, s, m, h or d, like 500ms, 10s, 5m)"
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "valid"),
    [
        ("http", "timeout", "0", "more than 0"),
        ("http", "connect_timeout", "-1", "more than 0"),
        ("retry", "max_retry_after", "0s", "more than 0"),
        ("queue", "poll_interval", "0ms", "more than 0"),
        ("http", "max_in_flight", "0", "1 or more"),
        ("http", "max_in_flight_per_endpoint", "-3", "1 or more"),
        ("queue", "max_payload_bytes", "0", "1 or more"),
    ],
)
def test_zero_or_negative_is_refused_where_positive_is_needed(
    tmp_path: Path, section: str, key: str, value: str, valid: str
) -> None:
    path = write(tmp_path, f"{section}:\n  {key}: {value}\n")
    assert problems(path) == [f"2: {section}.{key}: out of range ({value}; valid: {valid})"]


def test_negative_shutdown_grace_is_refused_but_zero_is_allowed(tmp_path: Path) -> None:
    assert load(write(tmp_path, "shutdown_grace: 0\n")).shutdown_grace == 0.0
    path = write(tmp_path, "shutdown_grace: -1\n")
    assert problems(path) == ["1: shutdown_grace: out of range (-1; valid: 0 or more)"]


@pytest.mark.parametrize(
    ("section", "key", "value", "valid"),
    [
        ("http", "response_excerpt_bytes", "65537", "0 to 65536"),
        ("retry", "max_retries", "21", "0 to 20"),
        ("retry", "max_retries", "-1", "0 to 20"),
        ("retry", "jitter", "0.6", "0 to 0.5"),
        ("queue", "batch_size", "10001", "1 to 10000"),
    ],
)
def test_value_outside_its_range_is_refused(
    tmp_path: Path, section: str, key: str, value: str, valid: str
) -> None:
    path = write(tmp_path, f"{section}:\n  {key}: {value}\n")
    assert problems(path) == [f"2: {section}.{key}: out of range ({value}; valid: {valid})"]


def test_empty_backoff_list_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "retry:\n  backoff: []\n")
    assert problems(path) == [
        "2: retry.backoff: empty list (valid: one or more durations, like [5s, 5m, 30m])"
    ]


def test_each_bad_backoff_item_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "retry:\n  backoff: [5s, soon, -2]\n")
    found = problems(path)
    assert [line.split(": ")[1] for line in found] == ["retry.backoff[1]", "retry.backoff[2]"]


@pytest.mark.parametrize(("key", "value"), [("level", "loud"), ("format", "xml")])
def test_unknown_logging_value_lists_the_valid_ones(tmp_path: Path, key: str, value: str) -> None:
    valid = {"level": "debug, info, warning, error", "format": "auto, json, console"}[key]
    path = write(tmp_path, f"logging:\n  {key}: {value}\n")
    assert problems(path) == [f"2: logging.{key}: unknown value ('{value}'; valid: {valid})"]


def test_bad_network_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  allow_networks: [10.0.0.0/8, 10.0.0.0/33]\n")
    assert problems(path) == [
        "2: http.allow_networks[1]: not a network ('10.0.0.0/33'; valid: an address or CIDR "
        "block, like 10.0.0.0/8 or fd00::/8)"
    ]


def test_ca_bundle_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  ca_bundle: certs/ca.pem\n")
    [found] = problems(path)
    assert found.startswith(f"2: http.ca_bundle: no such file ({tmp_path / 'certs' / 'ca.pem'}; ")


def test_relative_ca_bundle_is_taken_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    path = write(tmp_path, "http:\n  ca_bundle: ca.pem\n")
    assert load(path).http.ca_bundle == tmp_path / "ca.pem"


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("30", 30.0),
        ("0.25", 0.25),
        (" 5 m ", 300.0),
    ],
)
def test_parse_duration_reads_units_and_bare_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5 minutes", "5w", "-5s", "1e3", "nan", "5s5s"])
def test_parse_duration_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_duration_may_be_a_bare_yaml_number(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  timeout: 12\n  connect_timeout: 0.75\n")
    http = load(path).http
    assert (http.timeout, http.connect_timeout) == (12.0, 0.75)


# --- webhooks: name, url, events, stores ---------------------------------------------------------


def test_valid_webhook_is_read_with_defaults_from_http(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        http:
          timeout: 20s
          connect_timeout: 3s
          max_in_flight_per_endpoint: 5
        webhooks:
          - name: erp.sync_1
            url: https://erp.example.com/hooks?x=1
            events: [order.created, product.deleted]
            stores: [store-1, store-2]
        """,
    )
    [webhook] = load(path).webhooks
    assert webhook.name == "erp.sync_1"
    assert webhook.url == "https://erp.example.com/hooks?x=1"
    assert webhook.events == {"order.created", "product.deleted"}
    assert webhook.stores == {"store-1", "store-2"}
    assert (webhook.max_in_flight, webhook.timeout, webhook.connect_timeout) == (5, 20.0, 3.0)
    assert webhook.secrets == ()
    assert webhook.headers == ()
    assert not webhook.allow_http


def test_webhook_overrides_http_defaults(tmp_path: Path) -> None:
    path = webhook_file(tmp_path, "max_in_flight: 2\ntimeout: 4s\nconnect_timeout: 500ms\n")
    [webhook] = load(path).webhooks
    assert (webhook.max_in_flight, webhook.timeout, webhook.connect_timeout) == (2, 4.0, 0.5)


def test_webhook_missing_required_keys_reports_each_at_its_start(tmp_path: Path) -> None:
    path = write(tmp_path, "webhooks:\n  - timeout: 5s\n")
    found = problems(path)
    assert [line.split(": ")[:2] for line in found] == [
        ["2", "webhooks[0].name"],
        ["2", "webhooks[0].url"],
        ["2", "webhooks[0].events"],
        ["2", "webhooks[0].stores"],
    ]
    assert all(": missing (required: " in line for line in found)


def test_webhook_that_is_not_a_mapping_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "webhooks:\n  - https://erp.example.com/h\n")
    [found] = problems(path)
    assert found.startswith("2: webhooks[0]: not a mapping ('https://erp.example.com/h'; valid: ")


def test_duplicate_webhook_name_is_reported_at_the_second_naming_the_first(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """
        webhooks:
          - name: erp
            url: https://a.example.com/
            events: ['*']
            stores: ['*']
          - name: erp
            url: https://b.example.com/
            events: ['*']
            stores: ['*']
        """,
    )
    assert problems(path) == [
        "6: webhooks[1].name: duplicate webhook name 'erp' (first at line 2; valid: a name no "
        "other webhook uses)"
    ]


@pytest.mark.parametrize("name", ["bad name", "-erp", "_erp", "erp/1", "x" * 65, "''"])
def test_invalid_webhook_name_is_refused(tmp_path: Path, name: str) -> None:
    path = write(
        tmp_path,
        f"webhooks:\n  - name: {name}\n    url: https://a.example.com/\n"
        "    events: ['*']\n    stores: ['*']\n",
    )
    [found] = problems(path)
    assert found.startswith("2: webhooks[0].name: not a valid webhook name (")


def test_longest_webhook_name_is_accepted(tmp_path: Path) -> None:
    name = "a" + "-_." * 21
    path = write(
        tmp_path,
        f"webhooks:\n  - name: {name}\n    url: https://a.example.com/\n"
        "    events: ['*']\n    stores: ['*']\n",
    )
    assert load(path).webhooks[0].name == name


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://erp.example.com/h", "not an absolute http(s) URL with a host"),
        ("/hooks/aiq", "not an absolute http(s) URL with a host"),
        ("https:///path", "not an absolute http(s) URL with a host"),
        ("https://erp.example.com:99999/", "not a valid URL"),
        ("'https://erp.example.com/a b'", "holds whitespace or control characters"),
    ],
)
def test_bad_url_is_refused(tmp_path: Path, url: str, problem: str) -> None:
    path = webhook_file(tmp_path, url=url)
    [found] = problems(path)
    assert found.startswith(f"3: webhooks[0].url: {problem} (")


def test_plain_http_url_is_refused_with_how_to_allow_it(tmp_path: Path) -> None:
    path = webhook_file(tmp_path, url="http://erp.example.com/h")
    assert problems(path) == [
        "3: webhooks[0].url: plain http:// is refused ('http://erp.example.com/h'; valid: "
        "https://, or set allow_http: true on this webhook, or http.allow_http: true for all)"
    ]


def test_plain_http_url_is_allowed_by_the_webhook_switch(tmp_path: Path) -> None:
    path = webhook_file(tmp_path, "allow_http: true\n", url="http://erp.example.com/h")
    assert load(path).webhooks[0].allow_http


def test_plain_http_url_is_allowed_by_the_global_switch(tmp_path: Path) -> None:
    path = webhook_file(tmp_path, url="http://erp.example.com/h")
    path.write_text("http:\n  allow_http: true\n" + path.read_text(), encoding="utf-8")
    assert load(path).webhooks[0].allow_http


def test_unknown_event_type_suggests_and_lists_the_catalogue(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        webhooks:
          - name: erp
            url: https://erp.example.com/h
            events: [order.created, order.creatd]
            stores: ['*']
        """,
    )
    assert problems(path) == [
        f"4: webhooks[0].events[1]: unknown event type 'order.creatd' (did you mean "
        f"order.created? valid: {', '.join(EVENT_TYPES)}; or a wildcard: *, order.*, product.*)"
    ]


@pytest.mark.parametrize("pattern", ["orders.*", "order.created.*", "*.created", "Order.created"])
def test_unknown_wildcard_is_refused(tmp_path: Path, pattern: str) -> None:
    path = webhook_file(tmp_path)
    path.write_text(path.read_text().replace("[order.created]", f"['{pattern}']"))
    [found] = problems(path)
    assert found.startswith(f"4: webhooks[0].events[0]: unknown event type '{pattern}' (")


def test_wildcards_expand_to_catalogue_types(tmp_path: Path) -> None:
    path = webhook_file(tmp_path)
    path.write_text(path.read_text().replace("[order.created]", "[order.*, product.deleted]"))
    events = load(path).webhooks[0].events
    assert events == {t for t in EVENT_TYPES if t.startswith("order.")} | {"product.deleted"}


def test_star_subscribes_to_every_event_type(tmp_path: Path) -> None:
    path = webhook_file(tmp_path)
    path.write_text(path.read_text().replace("[order.created]", "['*']"))
    assert load(path).webhooks[0].events == set(EVENT_TYPES)


@pytest.mark.parametrize("key", ["events", "stores"])
def test_empty_events_or_stores_list_is_refused(tmp_path: Path, key: str) -> None:
    path = webhook_file(tmp_path)
    text = path.read_text()
    path.write_text(text.replace("[order.created]" if key == "events" else "[store-1]", "[]"))
    [found] = problems(path)
    assert found.startswith(f"{4 if key == 'events' else 5}: webhooks[0].{key}: empty list (")


def test_store_ids_must_be_non_empty_strings(tmp_path: Path) -> None:
    path = webhook_file(tmp_path)
    path.write_text(path.read_text().replace("[store-1]", "[store-1, '', 7]"))
    assert problems(path) == [
        "5: webhooks[0].stores[1]: empty store id (valid: one or more store ids, or '*' for "
        "every store)",
        "5: webhooks[0].stores[2]: not a string (an integer 7; valid: text, quoted)",
    ]


def test_star_store_is_kept_as_every_store(tmp_path: Path) -> None:
    path = webhook_file(tmp_path)
    path.write_text(path.read_text().replace("[store-1]", "['*']"))
    assert load(path).webhooks[0].stores == {"*"}


# --- secrets -------------------------------------------------------------------------------------


def test_literal_secret_is_decoded_and_flagged_as_literal(tmp_path: Path) -> None:
    config = load(webhook_file(tmp_path, f"secret: {SECRET}\n"))
    assert [s.key for s in config.webhooks[0].secrets] == [KEY]
    assert config.webhooks[0].secrets[0].expires_at is None
    assert config.has_literal_secret


def test_secret_from_environment_is_not_flagged_as_literal(tmp_path: Path) -> None:
    config = load(webhook_file(tmp_path, "secret: ${ERP_SECRET}\n"), {"ERP_SECRET": SECRET})
    assert [s.key for s in config.webhooks[0].secrets] == [KEY]
    assert not config.has_literal_secret


def test_unset_environment_variable_is_named(tmp_path: Path) -> None:
    path = webhook_file(tmp_path, "secret: ${ERP_SECRET}\n")
    assert problems(path, {"OTHER": "x"}) == [
        "6: webhooks[0].secret: environment variable ERP_SECRET is not set (valid: set it in "
        "the dispatcher's environment, e.g. the unit's EnvironmentFile)"
    ]


@pytest.mark.parametrize(
    "secret",
    [
        base64.b64encode(KEY).decode(),  # no prefix
        "whsec_" + base64.b64encode(bytes(23)).decode(),  # too short
        "whsec_" + base64.b64encode(bytes(65)).decode(),  # too long
        "whsec_" + base64.urlsafe_b64encode(bytes([251] * 30)).decode(),  # not standard base64
        "whsec_not*base64*at*all*and*long*enough*",
        "",
    ],
)
def test_malformed_secret_is_refused_without_showing_it(tmp_path: Path, secret: str) -> None:
    path = webhook_file(tmp_path, f"secret: '{secret}'\n")
    assert problems(path) == [
        "6: webhooks[0].secret: not a whsec_ secret (value hidden; valid: 24 to 64 random "
        "bytes, base64 after 'whsec_')"
    ]


def test_malformed_secret_from_environment_is_not_shown(tmp_path: Path) -> None:
    leaked = "whsec_c2hvcnQ="
    path = webhook_file(tmp_path, "secret: ${ERP_SECRET}\n")
    [found] = problems(path, {"ERP_SECRET": leaked})
    assert "not a whsec_ secret" in found
    assert leaked not in found
    assert "c2hvcnQ" not in found


def test_secret_of_the_wrong_type_is_not_shown(tmp_path: Path) -> None:
    path = webhook_file(tmp_path, "secret: 123456789\n")
    [found] = problems(path)
    assert "123456789" not in found
    assert found.startswith("6: webhooks[0].secret: not a string (an integer; ")


def test_rotation_list_keeps_order_and_expiry(tmp_path: Path) -> None:
    extra = f"""
    secrets:
      - {SECRET}
      - secret: ${{OLD_SECRET}}
        expires: 2030-01-31T12:00:00Z
    """
    config = load(webhook_file(tmp_path, extra), {"OLD_SECRET": OTHER_SECRET})
    secrets = config.webhooks[0].secrets
    assert [s.key for s in secrets] == [KEY, OTHER_KEY]
    assert secrets[0].expires_at is None
    assert secrets[1].expires_at == datetime(2030, 1, 31, 12, tzinfo=UTC)


def test_expired_secret_is_kept_for_the_signer_to_skip(tmp_path: Path) -> None:
    extra = f"secrets:\n  - secret: {SECRET}\n    expires: '2001-01-01T00:00:00+02:00'\n"
    [secret] = load(webhook_file(tmp_path, extra)).webhooks[0].secrets
    assert secret.expires_at is not None
    assert secret.expires_at < datetime.now(UTC)


@pytest.mark.parametrize(
    ("expires", "problem"),
    [
        ("2030-01-31", "no time zone given"),
        ("2030-01-31T12:00:00", "no time zone given"),
        ("next tuesday", "not a date and time"),
        ("[2030]", "not a date and time"),
    ],
)
def test_bad_expiry_is_refused(tmp_path: Path, expires: str, problem: str) -> None:
    extra = f"secrets:\n  - secret: {SECRET}\n    expires: {expires}\n"
    [found] = problems(webhook_file(tmp_path, extra))
    assert found.startswith(f"8: webhooks[0].secrets[0].expires: {problem} (")


def test_rotation_entry_problems_are_each_reported(tmp_path: Path) -> None:
    extra = """
    secrets:
      - whsec_bad
      - expires: 2030-01-31T00:00:00Z
      - {secret: '${MISSING}', note: old}
    """
    found = problems(webhook_file(tmp_path, extra))
    assert [line.split(": ")[:2] for line in found] == [
        ["7", "webhooks[0].secrets[0]"],
        ["8", "webhooks[0].secrets[1].secret"],
        ["9", "webhooks[0].secrets[2].note"],
        ["9", "webhooks[0].secrets[2].secret"],
    ]


def test_empty_rotation_list_is_refused(tmp_path: Path) -> None:
    [found] = problems(webhook_file(tmp_path, "secrets: []\n"))
    assert found.startswith("6: webhooks[0].secrets: empty list (")


def test_secret_file_is_read_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "erp.secret").write_text(SECRET + "\n", encoding="utf-8")
    config = load(webhook_file(tmp_path, "secret_file: erp.secret\n"))
    assert [s.key for s in config.webhooks[0].secrets] == [KEY]
    assert not config.has_literal_secret


def test_secret_file_is_read_from_the_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "erp.secret").write_text(SECRET, encoding="utf-8")
    (tmp_path / "erp.secret").write_text(OTHER_SECRET, encoding="utf-8")
    path = webhook_file(tmp_path, "secret_file: erp.secret\n")
    config = load(path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert [s.key for s in config.webhooks[0].secrets] == [KEY]


def test_missing_secret_file_is_reported_with_its_resolved_path(tmp_path: Path) -> None:
    [found] = problems(webhook_file(tmp_path, "secret_file: erp.secret\n"))
    assert found.startswith(
        f"6: webhooks[0].secret_file: cannot read {tmp_path / 'erp.secret'} (No such file"
    )


def test_secret_file_without_a_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    (tmp_path / "erp.secret").write_text("hunter2-is-my-password\n", encoding="utf-8")
    [found] = problems(webhook_file(tmp_path, "secret_file: erp.secret\n"))
    assert found.startswith(f"6: webhooks[0].secret_file: {tmp_path / 'erp.secret'} holds no ")
    assert "hunter2" not in found


def test_only_one_secret_source_may_be_set(tmp_path: Path) -> None:
    path = webhook_file(tmp_path, f"secret: {SECRET}\nsecret_file: erp.secret\n")
    found = problems(path)
    assert found[0] == (
        "7: webhooks[0].secret_file: set together with secret (only one of secret, secrets, "
        "secret_file)"
    )
    assert found[1].startswith("7: webhooks[0].secret_file: cannot read ")
    assert len(found) == 2


def test_secret_written_where_a_list_belongs_is_not_shown(tmp_path: Path) -> None:
    [found] = problems(webhook_file(tmp_path, f"secrets: {SECRET}\n"))
    assert found == (
        "6: webhooks[0].secrets: not a list (a string; valid: one or more whsec_ secrets, "
        "newest first)"
    )


def test_repr_shows_no_secret_or_header_value(tmp_path: Path) -> None:
    extra = f"secret: {SECRET}\nheaders:\n  Authorization: Bearer tok-9f8e7d\n"
    config = load(webhook_file(tmp_path, extra))
    shown = repr(config)
    assert "erp" in shown
    assert SECRET.removeprefix("whsec_") not in shown
    assert repr(KEY) not in shown
    assert "tok-9f8e7d" not in shown


# --- headers -------------------------------------------------------------------------------------


def test_headers_are_read_in_order_with_environment_references(tmp_path: Path) -> None:
    extra = "headers:\n  Authorization: Bearer ${ERP_TOKEN}\n  X-Source: ${SOURCE}\n"
    config = load(webhook_file(tmp_path, extra), {"ERP_TOKEN": "t0k", "SOURCE": "shop"})
    assert config.webhooks[0].headers == (("Authorization", "Bearer t0k"), ("X-Source", "shop"))
    assert not config.has_literal_secret


def test_literal_header_value_is_flagged_as_literal(tmp_path: Path) -> None:
    config = load(webhook_file(tmp_path, "headers:\n  Authorization: Bearer t0k\n"))
    assert config.has_literal_secret


def test_environment_reference_outside_secrets_and_headers_is_left_as_written(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "database: ${STATE}/dispatcher.db\n")
    assert load(path, {"STATE": "/srv"}).database == tmp_path / "${STATE}" / "dispatcher.db"


@pytest.mark.parametrize(
    "name",
    [
        "Webhook-Signature",
        "webhook-id",
        "WEBHOOK-TIMESTAMP",
        "Content-Type",
        "content-length",
        "Host",
        "User-Agent",
    ],
)
def test_header_set_by_the_dispatcher_is_refused(tmp_path: Path, name: str) -> None:
    [found] = problems(webhook_file(tmp_path, f"headers:\n  {name}: x\n"))
    assert found.startswith(f"7: webhooks[0].headers.{name}: header '{name}' cannot be configured")
    assert "the dispatcher sets" in found


@pytest.mark.parametrize("name", ["X Source", "X-Source:", "Ünicode", "(x)"])
def test_header_name_must_be_an_http_token(tmp_path: Path, name: str) -> None:
    [found] = problems(webhook_file(tmp_path, f"headers:\n  '{name}': x\n"))
    assert found.startswith(f"7: webhooks[0].headers.{name}: not a valid header name (")


@pytest.mark.parametrize("value", ['"a\\r\\nX-Evil: 1"', '"a\\nb"', '"a\\u0000"'])
def test_header_value_with_line_break_is_refused(tmp_path: Path, value: str) -> None:
    [found] = problems(webhook_file(tmp_path, f"headers:\n  X-Source: {value}\n"))
    assert found.startswith("7: webhooks[0].headers.X-Source: holds a line break or control ")


def test_header_value_with_line_break_from_environment_is_refused(tmp_path: Path) -> None:
    path = webhook_file(tmp_path, "headers:\n  X-Token: ${TOKEN}\n")
    [found] = problems(path, {"TOKEN": "abc\r\nX-Evil: 1"})
    assert "holds a line break" in found
    assert "X-Evil" not in found


def test_header_names_are_unique_ignoring_case(tmp_path: Path) -> None:
    found = problems(webhook_file(tmp_path, "headers:\n  X-Source: a\n  x-source: b\n"))
    assert found == [
        "8: webhooks[0].headers.x-source: duplicate header (first at line 7; names ignore case)"
    ]


def test_header_value_must_be_a_string(tmp_path: Path) -> None:
    [found] = problems(webhook_file(tmp_path, "headers:\n  X-Version: 2\n"))
    assert (
        found == "7: webhooks[0].headers.X-Version: not a string (an integer; valid: text, quoted)"
    )


def test_headers_must_be_a_mapping(tmp_path: Path) -> None:
    [found] = problems(webhook_file(tmp_path, "headers: [X-Source]\n"))
    assert found == (
        "6: webhooks[0].headers: not a mapping (a list; valid: names mapped to values)"
    )


def test_header_text_written_where_a_mapping_belongs_is_not_shown(tmp_path: Path) -> None:
    [found] = problems(webhook_file(tmp_path, "headers: 'Authorization: Bearer tok-9f8e7d'\n"))
    assert found == (
        "6: webhooks[0].headers: not a mapping (a string; valid: names mapped to values)"
    )


# --- every problem at once -----------------------------------------------------------------------


def test_bad_url_and_unknown_event_in_one_webhook_give_two_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        webhooks:
          - name: erp
            url: erp.example.com
            events: [order.creatd]
            stores: ['*']
        """,
    )
    found = problems(path)
    assert [line.split(": ")[:2] for line in found] == [
        ["3", "webhooks[0].url"],
        ["4", "webhooks[0].events[0]"],
    ]


def test_every_problem_in_the_file_is_listed_at_once_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        database: dispatcher.db
        http:
          timout: 10s
          max_in_flight: "many"
        retry:
          backoff: [5s, soon]
        logging:
          level: loud
        webhooks:
          - name: erp
            url: http://erp.example.com/h
            events: [order.creatd]
            stores: [store-1]
            secret: ${ERP_SECRET}
            headers:
              Host: erp
          - name: erp
            url: https://erp.example.com/h
            events: ['*']
            stores: []
        shutdown_grace: soon
        """,
    )
    found = problems(path)
    assert [line.split(": ")[:2] for line in found] == [
        ["3", "http.timout"],
        ["4", "http.max_in_flight"],
        ["6", "retry.backoff[1]"],
        ["8", "logging.level"],
        ["11", "webhooks[0].url"],
        ["12", "webhooks[0].events[0]"],
        ["14", "webhooks[0].secret"],
        ["16", "webhooks[0].headers.Host"],
        ["17", "webhooks[1].name"],
        ["20", "webhooks[1].stores"],
        ["21", "shutdown_grace"],
    ]
    assert "environment variable ERP_SECRET is not set" in found[6]
    assert "(first at line 10;" in found[8]


def test_error_message_holds_every_problem_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "queue:\n  batch_size: 0\nlogging:\n  level: loud\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).splitlines() == caught.value.problems
    assert len(caught.value.problems) == 2


# --- the shipped example -------------------------------------------------------------------------


def test_example_config_loads_with_its_environment(tmp_path: Path) -> None:
    (tmp_path / "warehouse-webhook.secret").write_text(SECRET + "\n", encoding="utf-8")
    env = {
        "ERP_WEBHOOK_SECRET": SECRET,
        "WAREHOUSE_TOKEN": "t0k",
        "ANALYTICS_SECRET_NEW": SECRET,
        "ANALYTICS_SECRET_OLD": OTHER_SECRET,
        "CREDENTIALS_DIRECTORY": str(tmp_path),
    }
    config = load(REPO / "config.example.yaml", env)
    names = [webhook.name for webhook in config.webhooks]
    assert names == ["erp-sync", "warehouse", "analytics"]
    assert config.has_literal_secret  # the X-Source header value is written in the file
    assert all(webhook.secrets for webhook in config.webhooks)
    assert config.webhooks[1].headers == (("Authorization", "Bearer t0k"), ("X-Source", "shop"))
    assert config.webhooks[2].secrets[1].expires_at is not None


def test_credentials_in_a_url_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        webhooks:
          - name: w
            url: https://user:pa55@hooks.example.com/x
            events: [order.created]
            stores: [s]
        """,
    )
    (problem,) = problems(path)
    assert "webhooks[0].url: holds credentials" in problem
    assert "pa55" not in problem


def test_a_secret_without_base64_padding_is_accepted(tmp_path: Path) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 25).decode().rstrip("=")
    path = write(
        tmp_path,
        f"""
        webhooks:
          - name: w
            url: https://hooks.example.com/x
            events: [order.created]
            stores: [s]
            secret: {secret}
        """,
    )
    assert load(path).webhooks[0].secrets[0].key == b"k" * 25
