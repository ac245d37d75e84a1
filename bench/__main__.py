"""``python -m bench``: run the benchmark scenarios side by side and write latest.json.

    python -m bench                       # every scenario
    python -m bench --scenario limiter    # one (repeatable)
    python -m bench --quick               # a few seconds per scenario (or BENCH_QUICK=1)

One throwaway embedded PostgreSQL (durable: fsync on) serves the whole run. Each
scenario prints a markdown table with raw figures and ratios, and the run ends with the
targets, each MET or MISSED. Figures go to ``bench/results/latest.json``; a run of some
scenarios only updates those scenarios' keys in an existing file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import framework as fw

SCENARIOS = [
    "limiter",
    "round_trips",
    "throughput",
    "invalidation",
    "hot_project",
    "realtime",
    "overload",
    "local_deny",
]
SCENARIOS += ["auth_hashing"]  # end-user auth: hashing stays off the event loop
SCENARIOS += ["owner_rows"]  # sessions + owner rules on a select (#17, data routes)
SCENARIOS += ["jobs"]  # background jobs: PostgreSQL queue vs a Redis queue


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def run_scenario(bench: fw.Bench, name: str) -> fw.ScenarioResult:
    module = importlib.import_module(f"bench.scenarios.{name}")
    waited = bench.settle()
    if waited > 2:
        print(f"(waited {waited:.0f} s for autovacuum to finish before {name})", file=sys.stderr)
    started = time.perf_counter()
    try:
        result: fw.ScenarioResult = module.run(bench)
    except fw.Skip as exc:
        result = fw.ScenarioResult(name, dict.fromkeys(module.KEYS), skipped=str(exc))
    except Exception as exc:
        traceback.print_exc()
        result = fw.ScenarioResult(
            name, dict.fromkeys(module.KEYS), skipped=f"FAILED: {type(exc).__name__}: {exc}"
        )
    result.seconds = round(time.perf_counter() - started, 1)
    missing = [k for k in module.KEYS if k not in result.keys]
    for k in missing:
        result.keys[k] = None
    return result


def print_result(result: fw.ScenarioResult) -> None:
    print(f"\n## {result.name}  ({result.seconds:g} s)\n", flush=True)
    if result.skipped:
        print(f"SKIPPED: {result.skipped}\n", flush=True)
        return
    for note in result.notes:
        print(f"- {note}")
    if result.notes:
        print()
    for table in result.tables:
        print(table + "\n")
    sys.stdout.flush()


def print_targets(results: list[fw.ScenarioResult]) -> None:
    rows = []
    for r in results:
        for t in r.targets:
            rows.append([t.name, t.goal, t.value, t.verdict])
        if r.skipped and not r.targets:
            rows.append([f"{r.name}: (scenario skipped)", "", None, "n/a"])
    if rows:
        print("\n## Targets\n")
        print(fw.markdown_table(["target", "goal", "measured", "verdict"], rows))
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds per scenario (same as BENCH_QUICK=1): noisy figures",
    )
    parser.add_argument("--output", type=Path, default=fw.RESULTS_DIR / "latest.json")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary database directory and gateway logs"
    )
    parser.add_argument(
        "--volatile",
        action="store_true",
        help="run PostgreSQL with fsync off (default: durable, fsync on)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    names = args.scenario or SCENARIOS

    started_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    machine = fw.machine_description()
    mode = "QUICK (short, noisy)" if fw.quick_mode() else "full"
    print(f"# Gateway benchmark — {started_at.isoformat()} — {mode} run")
    print(
        f"machine: {machine['cores']} cores, {machine['cpu']}, load average at start "
        f"{machine['loadavg_at_start']}"
    )
    bench = fw.Bench(durable=not args.volatile, keep=args.keep)
    results: list[fw.ScenarioResult] = []
    try:
        bench.start()
        version = bench.scalar("SHOW server_version")
        print(f"PostgreSQL {version}, {'durable (fsync on)' if bench.durable else 'fsync OFF'}")
        for name in names:
            print(f"\n… running {name}", file=sys.stderr, flush=True)
            result = run_scenario(bench, name)
            results.append(result)
            print_result(result)
    finally:
        bench.close()
    print_targets(results)

    payload: dict[str, Any] = {}
    if args.output.exists() and args.scenario:
        try:
            payload = json.loads(args.output.read_text())
        except (OSError, ValueError):
            payload = {}
    meta = payload.setdefault("_meta", {})
    meta.update({"machine": machine, "postgres": {"durable": bench.durable}})
    scen_meta = meta.setdefault("scenarios", {})
    details = meta.setdefault("details", {})
    for r in results:
        _merge(payload, _nest(r.keys))
        scen_meta[r.name] = {
            "date": started_at.isoformat(),
            "quick": fw.quick_mode(),
            "seconds": r.seconds,
            "skipped": r.skipped,
            "notes": r.notes,
            "targets": [
                {"name": t.name, "goal": t.goal, "value": t.value, "verdict": t.verdict}
                for t in r.targets
            ],
        }
        details[r.name] = r.details
    # keep scenario keys first, _meta last
    ordered = {k: v for k, v in payload.items() if k != "_meta"}
    ordered["_meta"] = payload["_meta"]
    fw.write_json(args.output, ordered)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
