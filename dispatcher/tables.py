"""Plain aligned tables for people reading the command line's output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Wide enough for an event id and a typical error message, narrow enough that a row of
# the event log still fits a wide terminal.
MAX_CELL = 60


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    # Control characters would break the row apart or move the cursor; show them escaped.
    text = str(value)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str = "") -> str:
    """Rows as a table with a header line, or `empty` when there are none. Each column is as
    wide as its widest cell; columns holding only numbers are right-aligned so digits line
    up."""
    if not rows and empty:
        return empty
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [
        any(_is_number(row.get(c)) for row in rows)
        and all(row.get(c) is None or _is_number(row.get(c)) for row in rows)
        for c in columns
    ]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    header = [c.upper() for c in columns]
    return "\n".join([line(header)] + [line(r) for r in cells])
