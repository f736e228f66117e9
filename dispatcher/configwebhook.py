"""The webhook values that need more than a type check: endpoint URLs, signing secrets
(with ${NAME} references and secret files) and custom headers.

Secret and header values never appear in a problem: they may hold credentials, and problems
end up in terminals and journals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node

from dispatcher import signing
from dispatcher.configparse import Problems, Section, to_datetime, to_text

SigningKey = tuple[bytes, datetime | None]

SECRET_KEYS = ("secret", "secrets", "secret_file")
_WHSEC_RULE = "24 to 64 random bytes, base64 after 'whsec_'"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL_RULE = "an absolute https:// URL with a host"
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters, tab excepted: a CR or LF would let a value start a header of its own.
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# The dispatcher writes these itself; a configured copy would break signing or framing.
_RESERVED_HEADERS = (
    "content-length",
    "content-type",
    "host",
    "user-agent",
    "webhook-id",
    "webhook-signature",
    "webhook-timestamp",
)


class WebhookContext:
    """What checking a webhook needs beyond its own mapping, and what the check finds out."""

    def __init__(self, problems: Problems, env: Mapping[str, str], base: Path) -> None:
        self.problems = problems
        self.env = env
        self.base = base  # the config file's folder, for relative paths
        self.first_lines: dict[str, int] = {}  # webhook name -> line where it is first used
        self.literal_secret = False


def decode_secret(text: str) -> bytes | None:
    """The HMAC key in a `whsec_<base64>` secret, or None when `text` is not one."""
    try:
        return signing.decode_secret(text.strip())
    except ValueError:
        return None


def endpoint_url(section: Section, allow_http: bool) -> str:
    node = section.required("url", _URL_RULE)
    path = section.path_of("url")
    text = None if node is None else to_text(section.problems, node, path)
    if node is None or text is None:
        return ""
    problem = _url_problem(text, allow_http)
    if problem is not None:
        section.problems.add(node, path, problem)
    return text


def _url_problem(text: str, allow_http: bool) -> str | None:
    if any(char.isspace() or not char.isprintable() for char in text):
        return f"holds whitespace or control characters ({text!r}; valid: {_URL_RULE})"
    try:
        parts = urlsplit(text)
        _ = parts.port  # urlsplit checks the port only when it is asked for
    except ValueError as exc:
        return f"not a valid URL ({text!r}: {exc}; valid: {_URL_RULE})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an absolute http(s) URL with a host ({text!r}; valid: {_URL_RULE})"
    if parts.username is not None or parts.password is not None:
        hint = "put credentials in headers:, e.g. Authorization, from ${ENV}"
        return f"holds credentials before the host (valid: a URL without user:password@; {hint})"
    if parts.scheme == "http" and not allow_http:
        allow = "or set allow_http: true on this webhook, or http.allow_http: true for all"
        return f"plain http:// is refused ({text!r}; valid: https://, {allow})"
    return None


def signing_keys(section: Section, context: WebhookContext) -> list[SigningKey]:
    """The keys from whichever one of secret, secrets and secret_file the webhook sets."""
    given = [key for key in SECRET_KEYS if section.get(key) is not None]
    for extra in given[1:]:
        node = section.entries[extra][0]
        valid = f"only one of {', '.join(SECRET_KEYS)}"
        section.problems.add(
            node, section.path_of(extra), f"set together with {given[0]} ({valid})"
        )
    readers: dict[str, Callable[[Section, WebhookContext], list[SigningKey]]] = {
        "secret": _single_secret,
        "secrets": _rotated_secrets,
        "secret_file": _secret_from_file,
    }
    # Each one is read even in a conflict, so that its own mistakes are reported too.
    found = [readers[key](section, context) for key in given]
    return found[0] if len(found) == 1 else []


def _single_secret(section: Section, context: WebhookContext) -> list[SigningKey]:
    node = section.entries["secret"][1]
    key = _secret_key(context, node, section.path_of("secret"))
    return [] if key is None else [(key, None)]


def _rotated_secrets(section: Section, context: WebhookContext) -> list[SigningKey]:
    keys: list[SigningKey] = []
    valid = "one or more whsec_ secrets, newest first"
    for node, path in section.nonempty_items("secrets", valid, hidden=True):
        if isinstance(node, MappingNode):
            entry = _dated_secret(
                Section(context.problems, node, path, ("secret", "expires")), context
            )
        else:
            key = _secret_key(context, node, path)
            entry = None if key is None else (key, None)
        if entry is not None:
            keys.append(entry)
    return keys


def _dated_secret(item: Section, context: WebhookContext) -> SigningKey | None:
    secret = item.required("secret", f"a whsec_ secret ({_WHSEC_RULE})")
    expires = item.get("expires")
    key = None if secret is None else _secret_key(context, secret, item.path_of("secret"))
    path = item.path_of("expires")
    expires_at = None if expires is None else to_datetime(context.problems, expires, path)
    return None if key is None else (key, expires_at)


def _secret_key(context: WebhookContext, node: Node, path: str) -> bytes | None:
    text = to_text(context.problems, node, path, hidden=True)
    value = None if text is None else expand_references(context, node, path, text)
    if value is None:
        return None
    key = decode_secret(value)
    if key is None:
        context.problems.add(
            node, path, f"not a whsec_ secret (value hidden; valid: {_WHSEC_RULE})"
        )
    return key


def _secret_from_file(section: Section, context: WebhookContext) -> list[SigningKey]:
    node = section.entries["secret_file"][1]
    path = section.path_of("secret_file")
    name = to_text(context.problems, node, path)
    if not name:
        if name is not None:
            context.problems.add(node, path, "empty path (valid: a file holding one secret)")
        return []
    # systemd's LoadCredential= hands secrets over in this folder, readable by the service only.
    folder = context.env.get("CREDENTIALS_DIRECTORY") or context.base
    file = Path(folder) / name
    content = _read_secret_file(context.problems, node, path, file)
    key = None if content is None else decode_secret(content)
    if content is not None and key is None:
        valid = f"valid: one whsec_ secret, {_WHSEC_RULE}"
        context.problems.add(node, path, f"{file} holds no whsec_ secret (content hidden; {valid})")
    return [] if key is None else [(key, None)]


def _read_secret_file(problems: Problems, node: Node, path: str, file: Path) -> str | None:
    valid = "valid: a file readable by the dispatcher, holding one whsec_ secret"
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        problems.add(
            node, path, f"cannot read {file} ({exc.strerror or type(exc).__name__}; {valid})"
        )
    except UnicodeDecodeError:
        # The decoder's own message quotes a byte of the file, which may be part of a secret.
        problems.add(node, path, f"cannot read {file} (not UTF-8 text; {valid})")
    return None


def expand_references(context: WebhookContext, node: Node, path: str, text: str) -> str | None:
    """`text` with each ${NAME} replaced from the environment; None if a name is not set."""
    names = list(dict.fromkeys(_ENV_REFERENCE.findall(text)))
    missing = [name for name in names if name not in context.env]
    for name in missing:
        valid = "valid: set it in the dispatcher's environment, e.g. the unit's EnvironmentFile"
        context.problems.add(node, path, f"environment variable {name} is not set ({valid})")
    if missing:
        return None
    if not names:
        context.literal_secret = True
    return _ENV_REFERENCE.sub(lambda match: context.env[match.group(1)], text)


def custom_headers(section: Section, context: WebhookContext) -> tuple[tuple[str, str], ...]:
    headers = section.section("headers", None, hidden=True)
    first_lines: dict[str, int] = {}
    found: list[tuple[str, str]] = []
    for name, (name_node, value_node) in headers.entries.items():
        path = headers.path_of(name)
        name_ok = _header_name_ok(context.problems, name_node, path, name, first_lines)
        value = _header_value(context, value_node, path)
        if name_ok and value is not None:
            found.append((name, value))
    return tuple(found)


def _header_name_ok(
    problems: Problems, node: Node, path: str, name: str, first_lines: dict[str, int]
) -> bool:
    folded = name.lower()
    if not _HEADER_NAME.fullmatch(name):
        valid = "letters, digits and !#$%&'*+-.^_`|~"
        problems.add(node, path, f"not a valid header name ({name!r}; valid: {valid})")
    elif folded in _RESERVED_HEADERS:
        reserved = ", ".join(_RESERVED_HEADERS)
        valid = f"any other name; the dispatcher sets {reserved} itself"
        problems.add(node, path, f"header {name!r} cannot be configured (valid: {valid})")
    elif folded in first_lines:
        first = first_lines[folded]
        problems.add(node, path, f"duplicate header (first at line {first}; names ignore case)")
    else:
        first_lines[folded] = node.start_mark.line + 1
        return True
    return False


def _header_value(context: WebhookContext, node: Node, path: str) -> str | None:
    text = to_text(context.problems, node, path, hidden=True)
    value = None if text is None else expand_references(context, node, path, text)
    if value is not None and _HEADER_VALUE_FORBIDDEN.search(value):
        valid = "valid: one line of text without control characters"
        context.problems.add(node, path, f"holds a line break or control character ({valid})")
        return None
    return value
