"""Reading a YAML node tree with every problem kept, located and worded for an operator.

`config.py` decides what the configuration means; this module only knows YAML nodes, their
line numbers and the plain value types (whole numbers, durations, booleans, strings, lists).
Nodes are walked directly, rather than loaded into dicts, so that each value keeps the line
it came from.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection
from datetime import datetime
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
BOOL_TAG = "tag:yaml.org,2002:bool"
NULL_TAG = "tag:yaml.org,2002:null"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"

_KIND_NAMES = {
    STR_TAG: "a string",
    INT_TAG: "an integer",
    FLOAT_TAG: "a number",
    BOOL_TAG: "a boolean",
    NULL_TAG: "an empty value",
    TIMESTAMP_TAG: "a date",
}

# Only scalar constructors are used, and those keep no state between calls.
_SCALARS = SafeConstructor()

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_FORMS = "seconds as a number, or a number with ms, s, m, h or d, like 500ms, 10s, 5m"

# Long values are cut so that one problem still fits on one readable line.
_SHOWN_CHARS = 60


def parse_duration(text: str) -> float:
    """Seconds in `text`: a bare number of seconds, or a number followed by ms, s, m, h or d."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (valid: {DURATION_FORMS})")
    number, unit = match.groups()
    return float(number) * _UNIT_SECONDS[unit or "s"]


def child(path: str, key: str) -> str:
    """The key path of `key` inside the mapping at `path` (the top level has an empty path)."""
    return f"{path}.{key}" if path else key


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def shown(node: Node, hidden: bool = False) -> str:
    """How a bad value is quoted in a problem; `hidden` names only its kind (for secrets)."""
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    kind = _KIND_NAMES.get(node.tag, f"a value tagged {node.tag}")
    if hidden or node.tag == NULL_TAG:
        return kind
    text = str(node.value)
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return repr(text) if node.tag == STR_TAG else f"{kind} {text}"


def suggestion(word: str, choices: Collection[str]) -> str:
    """A "did you mean" hint for a misspelt key or name, or nothing when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]}? " if close else ""


def span(low: float, high: float | None) -> str:
    return f"{low:g} or more" if high is None else f"{low:g} to {high:g}"


class Problems:
    """Every problem found so far, each one line: `FILE:LINE: KEY.PATH: what is wrong`."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._found: list[tuple[int, str]] = []

    def add(self, node: Node, path: str, message: str) -> None:
        line = node.start_mark.line + 1
        self._found.append((line, f"{self.file}:{line}: {path}: {message}"))

    def add_at(self, line: int, column: int, message: str) -> None:
        self._found.append((line, f"{self.file}:{line}:{column}: {message}"))

    def add_file(self, message: str) -> None:
        self._found.append((0, f"{self.file}: {message}"))

    def lines(self) -> list[str]:
        """The problems in file order, which is not the order the sections are checked in."""
        return [text for _line, text in sorted(self._found, key=lambda found: found[0])]


def compose_file(path: Path, problems: Problems) -> Node | None:
    """The root node of the YAML file, or None after reporting why there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.add_file(f"cannot read: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError as exc:
        problems.add_file(f"cannot read: not UTF-8 text (bad byte at offset {exc.start})")
        return None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        _report_syntax(exc, problems)
        return None
    except yaml.YAMLError as exc:
        problems.add_file(f"invalid YAML: {' '.join(str(exc).split())}")
        return None
    if root is None or is_null(root):
        problems.add_file("the file holds no settings (valid: a mapping of keys)")
        return None
    return root


def _report_syntax(exc: yaml.MarkedYAMLError, problems: Problems) -> None:
    message = f"invalid YAML: {exc.problem}"
    if exc.context and exc.context_mark:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        problems.add_file(message)
    else:
        problems.add_at(mark.line + 1, mark.column + 1, message)


def to_int(
    problems: Problems, node: Node, path: str, low: int, high: int | None = None
) -> int | None:
    if not isinstance(node, ScalarNode) or node.tag != INT_TAG:
        problems.add(node, path, f"not a whole number ({shown(node)}; valid: {span(low, high)})")
        return None
    value = _SCALARS.construct_yaml_int(node)
    if value < low or (high is not None and value > high):
        problems.add(node, path, f"out of range ({value}; valid: {span(low, high)})")
        return None
    return value


def to_number(problems: Problems, node: Node, path: str, low: float, high: float) -> float | None:
    value = _plain_number(node)
    if value is None:
        problems.add(node, path, f"not a number ({shown(node)}; valid: {span(low, high)})")
        return None
    if not low <= value <= high:
        problems.add(node, path, f"out of range ({value:g}; valid: {span(low, high)})")
        return None
    return value


def _plain_number(node: Node) -> float | None:
    if not isinstance(node, ScalarNode):
        return None
    if node.tag == INT_TAG:
        return float(_SCALARS.construct_yaml_int(node))
    if node.tag == FLOAT_TAG:
        value = _SCALARS.construct_yaml_float(node)
        return value if math.isfinite(value) else None
    return None


def to_duration(
    problems: Problems, node: Node, path: str, allow_zero: bool = False
) -> float | None:
    seconds = _duration_seconds(node)
    if seconds is None:
        problems.add(node, path, f"not a duration ({shown(node)}; valid: {DURATION_FORMS})")
        return None
    if seconds < 0 or (seconds == 0 and not allow_zero):
        least = "0 or more" if allow_zero else "more than 0"
        problems.add(node, path, f"out of range ({node.value}; valid: {least})")
        return None
    return seconds


def _duration_seconds(node: Node) -> float | None:
    if isinstance(node, ScalarNode) and node.tag == STR_TAG:
        try:
            return parse_duration(node.value)
        except ValueError:
            return None
    return _plain_number(node)


def to_bool(problems: Problems, node: Node, path: str) -> bool | None:
    if not isinstance(node, ScalarNode) or node.tag != BOOL_TAG:
        problems.add(node, path, f"not a boolean ({shown(node)}; valid: true or false, unquoted)")
        return None
    return _SCALARS.construct_yaml_bool(node)


def to_text(problems: Problems, node: Node, path: str, hidden: bool = False) -> str | None:
    if not isinstance(node, ScalarNode) or node.tag != STR_TAG:
        problems.add(node, path, f"not a string ({shown(node, hidden)}; valid: text, quoted)")
        return None
    return str(node.value)


def to_datetime(problems: Problems, node: Node, path: str) -> datetime | None:
    """An ISO 8601 date and time with a time zone; a naive one would be guessed, so refused."""
    valid = "valid: an ISO 8601 date and time with its zone, like 2025-07-01T00:00:00Z"
    if not isinstance(node, ScalarNode) or node.tag not in (STR_TAG, TIMESTAMP_TAG):
        problems.add(node, path, f"not a date and time ({shown(node)}; {valid})")
        return None
    try:
        value = datetime.fromisoformat(node.value)
    except ValueError:
        problems.add(node, path, f"not a date and time ({node.value!r}; {valid})")
        return None
    if value.tzinfo is None:
        problems.add(node, path, f"no time zone given ({node.value!r}; {valid})")
        return None
    return value


class Section:
    """One YAML mapping, checked against the keys it may hold and then read key by key.

    Each reader returns the default after reporting a bad value, so the walk goes on and
    finds the problems further down; the caller raises once the walk is over.
    """

    def __init__(
        self,
        problems: Problems,
        node: Node,
        path: str,
        keys: Collection[str] | None,
        hidden: bool = False,
    ) -> None:
        self.problems = problems
        self.node = node
        self.path = path
        self.entries: dict[str, tuple[Node, Node]] = {}
        self.is_mapping = isinstance(node, MappingNode) or is_null(node)
        if isinstance(node, MappingNode):
            self._collect(node, keys)
        elif not self.is_mapping:
            listed = f"keys {', '.join(sorted(keys))}" if keys else "names mapped to values"
            where = path or "(top level)"
            problems.add(node, where, f"not a mapping ({shown(node, hidden)}; valid: {listed})")

    def _collect(self, node: MappingNode, keys: Collection[str] | None) -> None:
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, ScalarNode) else "?"
            if key in self.entries:
                first = self.entries[key][0].start_mark.line + 1
                self.problems.add(
                    key_node, self.path_of(key), f"duplicate key (first at line {first})"
                )
            elif keys is not None and key not in keys:
                hint = suggestion(key, keys)
                valid = ", ".join(sorted(keys))
                self.problems.add(
                    key_node, self.path_of(key), f"unknown key ({hint}valid: {valid})"
                )
            else:
                self.entries[key] = (key_node, value_node)

    def path_of(self, key: str) -> str:
        return child(self.path, key)

    def get(self, key: str) -> Node | None:
        entry = self.entries.get(key)
        return None if entry is None else entry[1]

    def required(self, key: str, valid: str) -> Node | None:
        node = self.get(key)
        if node is None:
            self.problems.add(self.node, self.path_of(key), f"missing (required: {valid})")
        return node

    def section(self, key: str, keys: Collection[str] | None, hidden: bool = False) -> Section:
        """The mapping under `key`; a missing or empty one reads as all defaults."""
        node = self.get(key)
        if node is None:
            node = ScalarNode(NULL_TAG, "", self.node.start_mark, self.node.end_mark)
        return Section(self.problems, node, self.path_of(key), keys, hidden)

    def items(
        self, key: str, valid: str = "a list, like [a, b]", hidden: bool = False
    ) -> list[tuple[Node, str]]:
        """The items of the list under `key` with their key paths; [] when missing or bad."""
        node = self.get(key)
        if node is None or is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.problems.add(
                node, self.path_of(key), f"not a list ({shown(node, hidden)}; valid: {valid})"
            )
            return []
        return [(item, f"{self.path_of(key)}[{index}]") for index, item in enumerate(node.value)]

    def nonempty_items(self, key: str, valid: str, hidden: bool = False) -> list[tuple[Node, str]]:
        """Like `items`, for a list that must be present and hold at least one item."""
        node = self.required(key, valid)
        items = self.items(key, valid, hidden)
        if node is not None and not items and (is_null(node) or isinstance(node, SequenceNode)):
            self.problems.add(node, self.path_of(key), f"empty list (valid: {valid})")
        return items

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        node = self.get(key)
        value = None if node is None else to_int(self.problems, node, self.path_of(key), low, high)
        return default if value is None else value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        node = self.get(key)
        value = (
            None if node is None else to_number(self.problems, node, self.path_of(key), low, high)
        )
        return default if value is None else value

    def duration(self, key: str, default: float, allow_zero: bool = False) -> float:
        node = self.get(key)
        path = self.path_of(key)
        value = None if node is None else to_duration(self.problems, node, path, allow_zero)
        return default if value is None else value

    def boolean(self, key: str, default: bool) -> bool:
        node = self.get(key)
        value = None if node is None else to_bool(self.problems, node, self.path_of(key))
        return default if value is None else value

    def text(self, key: str) -> str | None:
        node = self.get(key)
        return None if node is None else to_text(self.problems, node, self.path_of(key))

    def choice(self, key: str, default: str, choices: Collection[str]) -> str:
        text = self.text(key)
        if text is None:
            return default
        if text not in choices:
            node = self.entries[key][1]
            valid = ", ".join(choices)
            self.problems.add(node, self.path_of(key), f"unknown value ({text!r}; valid: {valid})")
            return default
        return text
