"""``python -m bench``: run the benchmark scenarios side by side and record their figures.

    python -m bench                       # every scenario, full size
    python -m bench --scenario limiter    # one (repeatable)
    python -m bench --quick               # a few seconds per measurement: noisy figures
    python -m bench --smoke               # every scenario at the least size (CI): no figures

One throwaway embedded PostgreSQL (durable: fsync on) serves the whole run. Each
scenario prints its tables (raw figures and ratios) and the run ends with the targets,
each MET or MISSED, and one line per scenario: ran, skipped (and why) or FAILED.

Full and quick runs merge each scenario that ran into ``bench/results/latest.json``
(its keys, and under ``_meta`` its date, size, machine, commit, tables and targets),
leaving the other scenarios' figures as they were, then render docs/performance.md from
it. A smoke run writes ``bench/results/smoke.json`` instead and never touches either.
The run fails (exit 1) when a scenario raises or leaves one of its keys unwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import framework as fw
from bench import render
from bench.report import markdown_table
from bench.scenarios import SCENARIOS

LATEST = render.LATEST
SMOKE_OUTPUT = LATEST.parent / "smoke.json"
RESULTS_FORMAT = 2  # _meta.format: an older latest.json is started afresh
SETTLE_S = {fw.Mode.FULL: 30.0, fw.Mode.QUICK: 30.0, fw.Mode.SMOKE: 2.0}


@dataclass
class Ran:
    """One scenario's result and the facts a reader needs beside its figures."""

    result: fw.ScenarioResult
    facts: dict[str, Any]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _lookup(payload: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = payload
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


STEAL_WARN_PERCENT = 5.0


def run_scenario(bench: fw.Bench, name: str, postgres: dict[str, Any]) -> Ran:
    module = importlib.import_module(f"bench.scenarios.{name}")
    waited = bench.settle(SETTLE_S[fw.mode()])
    if waited > 2:
        print(f"(waited {waited:.0f} s for autovacuum to finish before {name})", file=sys.stderr)
    facts = {
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "mode": fw.mode().value,
        "size": dataclasses.asdict(module.SIZES.current()),
        # the bench's overrides (BENCH_JOBS_N, ...); never GATEWAY_* values: they may hold
        # secrets, and this file is committed
        "environment": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith("BENCH_") and k not in (fw.MODE_ENV, "BENCH_QUICK")
        },
        "machine": fw.machine_description(),
        "postgres": postgres,
        "commit": fw.source_revision(),
    }
    started = time.perf_counter()
    cpu_before = fw.cpu_times()
    try:
        result: fw.ScenarioResult = module.run(bench)
    except fw.Skip as exc:
        result = fw.ScenarioResult(name, dict.fromkeys(module.KEYS), skipped=str(exc))
    except Exception as exc:
        traceback.print_exc()
        result = fw.ScenarioResult(
            name, dict.fromkeys(module.KEYS), failed=f"{type(exc).__name__}: {exc}"
        )
    result.seconds = round(time.perf_counter() - started, 1)
    facts["seconds"] = result.seconds
    steal = facts["machine"]["steal_percent"] = fw.steal_percent(cpu_before, fw.cpu_times())
    if steal is not None and steal >= STEAL_WARN_PERCENT:
        print(
            f"(the hypervisor took {steal:g} % of the CPU time during {name}: its figures are "
            "slower than this machine is when quiet; compare ratios within the run only)",
            file=sys.stderr,
        )
    return Ran(result, facts)


def print_result(result: fw.ScenarioResult) -> None:
    print(f"\n## {result.name}  ({result.seconds:g} s)\n", flush=True)
    if result.skipped or result.failed:
        print(f"SKIPPED: {result.skipped}\n" if result.skipped else f"FAILED: {result.failed}\n")
        sys.stdout.flush()
        return
    for note in result.notes:
        print(f"- {note}")
    if result.notes:
        print()
    for table in result.tables:
        print(table.markdown() + "\n")
    sys.stdout.flush()


def print_targets(results: list[fw.ScenarioResult]) -> None:
    rows = []
    for r in results:
        for t in r.targets:
            rows.append([t.name, t.goal, t.value, t.verdict])
        if (r.skipped or r.failed) and not r.targets:
            rows.append([f"{r.name}: (scenario skipped)", "", None, "n/a"])
    if rows:
        print("\n## Targets\n")
        print(markdown_table(["target", "goal", "measured", "verdict"], rows))
        print()


def record(previous: dict[str, Any], runs: list[Ran]) -> dict[str, Any]:
    """The results file after these runs: each scenario that ran replaces its own keys and
    its ``_meta`` entry whole (no stale key survives a renamed one); scenarios that did not
    run, or were skipped or failed, keep what ``previous`` held. Scenario order is
    SCENARIOS', so the committed file diffs cleanly."""
    meta = previous.get("_meta", {})
    if meta.get("format") != RESULTS_FORMAT:
        previous, meta = {}, {}
    figures = {k: v for k, v in previous.items() if k != "_meta"}
    scenarios = dict(meta.get("scenarios", {}))
    details = dict(meta.get("details", {}))
    for ran in runs:
        r = ran.result
        if r.skipped or r.failed:
            continue
        figures[r.name] = _nest(r.keys).get(r.name, {})
        scenarios[r.name] = {
            **ran.facts,
            "notes": r.notes,
            "unmeasured": r.unmeasured,
            "tables": [t.to_json() for t in r.tables],
            "targets": [
                {"name": t.name, "goal": t.goal, "value": t.value, "verdict": t.verdict}
                for t in r.targets
            ],
        }
        details[r.name] = r.details
    order = {name: i for i, name in enumerate(SCENARIOS)}

    def ordered(d: dict[str, Any]) -> dict[str, Any]:
        return dict(sorted(d.items(), key=lambda kv: order.get(kv[0], len(order))))

    return {
        **ordered(figures),
        "_meta": {
            "format": RESULTS_FORMAT,
            "scenarios": ordered(scenarios),
            "details": ordered(details),
        },
    }


def check_written(path: Path, runs: list[Ran]) -> list[str]:
    """Read the file back: every scenario that ran wrote each of its KEYS, and a null one
    only where the scenario said why (``unmeasured``)."""
    written = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    for ran in runs:
        r = ran.result
        if r.skipped or r.failed:
            continue
        module = importlib.import_module(f"bench.scenarios.{r.name}")
        for key in module.KEYS:
            present, value = _lookup(written, key)
            if not present:
                problems.append(f"{r.name}: {key} is missing from {path}")
            elif value is None and key not in r.unmeasured:
                problems.append(f"{r.name}: {key} is null and the scenario did not say why")
    return problems


def print_summary(runs: list[Ran], problems: list[str], wall_s: float) -> None:
    print(f"\n## Summary ({fw.mode().value} run, {wall_s:.0f} s wall time)\n")
    for ran in runs:
        r = ran.result
        if r.failed:
            status = f"FAILED: {r.failed}"
        elif r.skipped:
            status = f"skipped: {r.skipped}"
        else:
            status = "ran"
            if r.unmeasured:
                status += " (left null: " + "; ".join(sorted(set(r.unmeasured.values()))) + ")"
        print(f"- {r.name} ({r.seconds:g} s): {status}")
    for problem in problems:
        print(f"- PROBLEM: {problem}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds per measurement (BENCH_MODE=quick): noisy figures, marked quick",
    )
    size.add_argument(
        "--smoke",
        action="store_true",
        help="every scenario at its least size (BENCH_MODE=smoke): checks that each one "
        f"completes and writes its keys; writes {SMOKE_OUTPUT.name}, never latest.json",
    )
    parser.add_argument(
        "--output", type=Path, help=f"results file (default: {LATEST} or, smoke, {SMOKE_OUTPUT})"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary database directory and gateway logs"
    )
    parser.add_argument(
        "--volatile",
        action="store_true",
        help="run PostgreSQL with fsync off (default: durable, fsync on)",
    )
    args = parser.parse_args(argv)
    if args.quick or args.smoke:
        os.environ[fw.MODE_ENV] = (fw.Mode.SMOKE if args.smoke else fw.Mode.QUICK).value
    smoke = fw.mode() is fw.Mode.SMOKE
    output: Path = args.output or (SMOKE_OUTPUT if smoke else LATEST)
    if smoke and output.resolve() == LATEST.resolve():
        parser.error("a smoke run's figures mean nothing: it never writes latest.json")
    names = args.scenario or SCENARIOS

    wall_start = time.perf_counter()
    machine = fw.machine_description()
    print(f"# Gateway benchmark — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — {fw.mode()} run")
    print(
        f"machine: {machine['cores']} cores, {machine['cpu']}, load average at start "
        f"{machine['loadavg_at_start']}"
    )
    bench = fw.Bench(durable=not args.volatile, keep=args.keep)
    runs: list[Ran] = []
    try:
        bench.start()
        postgres = {"version": bench.scalar("SHOW server_version"), "durable": bench.durable}
        print(f"PostgreSQL {postgres['version']}, {'durable' if bench.durable else 'fsync OFF'}")
        for name in names:
            print(f"\n… running {name}", file=sys.stderr, flush=True)
            ran = run_scenario(bench, name, postgres)
            runs.append(ran)
            print_result(ran.result)
    finally:
        bench.close()
    results = [ran.result for ran in runs]
    if smoke:
        print("\n(a smoke run's figures are not measurements: no target is judged)")
    else:
        print_targets(results)

    previous: dict[str, Any] = {}
    if not smoke and output.exists():
        try:
            previous = json.loads(output.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            print(f"(could not read {output}: starting it afresh)", file=sys.stderr)
    fw.write_json(output, record(previous, runs))
    print(f"wrote {output}")
    if not smoke and output.resolve() == LATEST.resolve():
        print(f"rendered {render.render_file(LATEST, render.DOC)}")
    problems = check_written(output, runs)
    print_summary(runs, problems, time.perf_counter() - wall_start)
    return 1 if problems or any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
