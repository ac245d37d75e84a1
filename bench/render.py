"""``python -m bench.render``: docs/performance.md's figures, rendered from latest.json.

The document's prose is written by hand; every figure in it lives between markers::

    <!-- bench:limiter -->
    (rendered: the scenario's date, size, machine, commit, notes, tables, targets, keys)
    <!-- /bench -->

    <!-- bench:targets -->
    (rendered: every target of every scenario, with its verdict and date)
    <!-- /bench -->

and comes from ``bench/results/latest.json``, so no figure is pasted by hand and none
outlives the run that measured it. ``python -m bench`` renders after writing
latest.json; run this after editing the markers or this module (``make bench-render``).
``--check`` changes nothing and exits 1 when the document is out of date (a unit test
does the same).

Pure: no database and no gateway import, so the check runs in the unit tier.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.report import Table, collapse_keys, markdown_table
from bench.scenarios import SCENARIOS

REPO_ROOT = Path(__file__).resolve().parent.parent
LATEST = REPO_ROOT / "bench" / "results" / "latest.json"
DOC = REPO_ROOT / "docs" / "performance.md"
FIX_COMMAND = "make bench-render  (or: .venv/bin/python -m bench.render)"
TARGETS_BLOCK = "targets"
BLOCK_RE = re.compile(r"(<!-- bench:([a-z_]+) -->\n)(.*?)(<!-- /bench -->)", re.DOTALL)


def _when(iso: str) -> str:
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _leaves(node: dict[str, Any], prefix: str) -> Iterator[str]:
    for key, value in node.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, dict):
            yield from _leaves(value, dotted)
        else:
            yield dotted


def _measured_line(facts: dict[str, Any]) -> str:
    machine = facts.get("machine", {})
    load = (machine.get("loadavg_at_start") or [None])[0]
    steal = machine.get("steal_percent")  # recorded since 2026-12-05
    stolen = "" if steal is None else f", {steal:g} % of CPU time stolen by the hypervisor"
    postgres = facts.get("postgres", {})
    parts = [
        f"Measured {_when(facts['date'])}",
        f"{facts.get('mode', 'full')} run, {facts.get('seconds', 0):g} s",
        f"commit `{facts.get('commit') or 'unknown'}`",
        f"{machine.get('cores')} cores ({machine.get('cpu')}), load average {load} at the start"
        + stolen,
        f"PostgreSQL {postgres.get('version')}, "
        + ("durable" if postgres.get("durable", True) else "fsync off"),
    ]
    return "_" + " · ".join(parts) + "._"


def render_scenario(name: str, results: dict[str, Any]) -> str:
    facts = results.get("_meta", {}).get("scenarios", {}).get(name)
    if facts is None:
        return f"_Not measured yet: `make bench SCENARIO={name}` fills this in._\n"
    keys = list(_leaves(results.get(name, {}), name))
    parts = [_measured_line(facts)]
    chosen = {**(facts.get("size") or {}), **(facts.get("environment") or {})}
    settings = [
        f"`{k}={','.join(map(str, v)) if isinstance(v, list) else v}`" for k, v in chosen.items()
    ]
    if settings:
        parts.append("Parameters: " + ", ".join(settings) + ".")
    if facts.get("mode") == "quick":
        parts.append(
            "_A quick run (a few seconds per measurement): its figures are noisier than a "
            "full run's._"
        )
    if facts.get("notes"):
        parts.append("\n".join(f"- {note}" for note in facts["notes"]))
    parts += [Table.from_json(t).markdown() for t in facts.get("tables", [])]
    if facts.get("targets"):
        parts.append(
            markdown_table(
                ["target", "goal", "measured", "verdict"],
                [[t["name"], t["goal"], t["value"], t["verdict"]] for t in facts["targets"]],
            )
        )
    unmeasured = facts.get("unmeasured") or {}
    for reason in sorted(set(unmeasured.values())):
        left = [k for k, why in unmeasured.items() if why == reason]
        parts.append(
            "Left null: " + ", ".join(f"`{k}`" for k in collapse_keys(left)) + f" ({reason})."
        )
    parts.append("Keys: " + ", ".join(f"`{k}`" for k in collapse_keys(keys)) + ".")
    return "\n\n".join(parts) + "\n"


def render_targets(results: dict[str, Any]) -> str:
    scenarios = results.get("_meta", {}).get("scenarios", {})
    rows = [
        [f"`{name}`", t["name"], t["goal"], t["value"], t["verdict"], _when(facts["date"])]
        for name in SCENARIOS
        if (facts := scenarios.get(name))
        for t in facts.get("targets", [])
    ]
    return (
        markdown_table(["scenario", "target", "goal", "measured", "verdict", "measured on"], rows)
        + "\n"
    )


def render_text(doc: str, results: dict[str, Any]) -> str:
    """``doc`` with every block between markers rendered afresh from ``results``."""

    def block(match: re.Match[str]) -> str:
        opening, name, _old, closing = match.groups()
        if name == TARGETS_BLOCK:
            body = render_targets(results)
        elif name in SCENARIOS:
            body = render_scenario(name, results)
        else:
            raise ValueError(f"unknown block <!-- bench:{name} --> (scenarios: {SCENARIOS})")
        return f"{opening}\n{body}\n{closing}"

    return BLOCK_RE.sub(block, doc)


def blocks(doc: str) -> list[str]:
    """The block names the document holds, in order."""
    return [m.group(2) for m in BLOCK_RE.finditer(doc)]


def render_file(results_path: Path = LATEST, doc_path: Path = DOC) -> Path:
    results = json.loads(results_path.read_text(encoding="utf-8"))
    rendered = render_text(doc_path.read_text(encoding="utf-8"), results)
    doc_path.write_text(rendered, encoding="utf-8")
    return doc_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument("--results", type=Path, default=LATEST)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the document is out of date"
    )
    args = parser.parse_args(argv)
    current = args.doc.read_text(encoding="utf-8")
    rendered = render_text(current, json.loads(args.results.read_text(encoding="utf-8")))
    if args.check:
        if rendered != current:
            print(f"{args.doc} is out of date with {args.results}: run {FIX_COMMAND}")
            return 1
        return 0
    args.doc.write_text(rendered, encoding="utf-8")
    print(f"rendered {args.doc} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
