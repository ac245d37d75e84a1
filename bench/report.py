"""Figures as markdown: the tables a scenario prints are the tables docs/performance.md shows.

Pure (no database, no gateway): ``bench.render`` imports it to turn
``bench/results/latest.json`` into the document, and a unit test does the same without
starting anything. A scenario builds ``Table``s of raw values; they are formatted only
when printed or rendered, so the JSON keeps the numbers and the terminal and the document
format them the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


def fmt(value: Any) -> str:
    """One figure as the tables show it: thousands separated, 3 significant digits below 1."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


@dataclass(frozen=True)
class Table:
    """A scenario's table: headers and rows of raw values (numbers stay numbers in JSON)."""

    headers: list[str]
    rows: list[list[Any]]

    def markdown(self) -> str:
        return markdown_table(self.headers, self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"headers": list(self.headers), "rows": [list(r) for r in self.rows]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Table:
        return cls(list(data["headers"]), [list(r) for r in data["rows"]])


def collapse_keys(keys: Sequence[str]) -> list[str]:
    """``a.b.x``, ``a.b.y``, ``a.c`` -> ``a.b.{x,y}``, ``a.c``: a scenario's keys, short
    enough to read in a sentence, in the order the scenario declares them."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, []).append(leaf)
    out = []
    for prefix, leaves in groups.items():
        inner = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
        out.append(f"{prefix}.{inner}" if prefix else inner)
    return out
