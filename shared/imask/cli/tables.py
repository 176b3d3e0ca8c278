"""Plain-text tables and field lists for the CLI's people-facing output (`--json` prints the data instead)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, empty: str = "(none)") -> list[str]:
    """Rows under an upper-case header, columns as wide as their widest cell; numbers right-aligned."""
    if not rows:
        return [empty]
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    numeric = [all((isinstance(row.get(c), int | float) and not isinstance(row.get(c), bool)) or row.get(c) is None
                   for row in rows) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric,
                                                                                 strict=True)).rstrip()

    return [line([c.upper() for c in columns]), *(line(r) for r in cells)]


def fields(mapping: dict[str, Any], indent: int = 0) -> list[str]:
    """`key  value` lines; a nested mapping indented under its key, a list of mappings as a table under it, other
    lists joined with commas."""
    pad = " " * indent
    width = max((len(k) for k in mapping), default=0)
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value and any(isinstance(v, dict | list) for v in value.values()):
            out += [f"{pad}{key}:", *fields(value, indent + 2)]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out += [f"{pad}{key}:", *(f"{pad}  {row}" for row in table(value))]
        else:
            out.append(f"{pad}{key.ljust(width)}  {cell(value)}")
    return out


def emit(value: Any, lines: list[str], as_json: bool) -> None:
    """The data as JSON for programs (--json), or the lines for people."""
    if as_json:
        print(json.dumps(value, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(lines))
