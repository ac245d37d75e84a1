"""Every bench scenario can run smoke-sized and promises its keys; latest.json is merged
per scenario and read back. (No database here: the smoke run itself is ``make bench-smoke``.)
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench import __main__ as bench_main
from bench import framework as fw
from bench.report import Table
from bench.scenarios import SCENARIOS

SCENARIO_DIR = Path(bench_main.__file__).parent / "scenarios"


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"bench.scenarios.{name}")


def test_every_scenario_module_is_listed_and_runs_in_the_smoke_bench() -> None:
    modules = sorted(p.stem for p in SCENARIO_DIR.glob("*.py") if p.stem != "__init__")
    assert modules == sorted(SCENARIOS), (
        "bench/scenarios/ and SCENARIOS (bench/scenarios/__init__.py) differ: a scenario "
        "that is not listed never runs, not even in the smoke bench"
    )
    assert len(set(SCENARIOS)) == len(SCENARIOS)


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_declares_its_keys(name: str) -> None:
    module = _module(name)
    assert name == module.NAME
    assert callable(module.run)
    keys: list[str] = module.KEYS
    assert keys, f"{name} promises no key"
    assert len(set(keys)) == len(keys), f"{name} promises a key twice"
    for key in keys:
        assert key.startswith(f"{name}."), f"{key}: a scenario's keys live under its name"
        clash = [k for k in keys if k.startswith(key + ".")]
        assert not clash, f"{key} is both a figure and a group ({clash})"


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_declares_its_sizes_and_smoke_is_the_smallest(name: str) -> None:
    sizes = _module(name).SIZES
    assert isinstance(sizes, fw.Sizes), f"{name}.SIZES must be a bench.framework.Sizes"
    kinds = {type(sizes.full), type(sizes.quick), type(sizes.smoke)}
    assert len(kinds) == 1 and dataclasses.is_dataclass(sizes.full), kinds
    for f in dataclasses.fields(sizes.full):
        full, quick, smoke = (getattr(s, f.name) for s in (sizes.full, sizes.quick, sizes.smoke))
        if isinstance(full, int | float):
            assert smoke <= quick <= full, f"{name}.{f.name}: {smoke}, {quick}, {full}"


def test_the_run_size_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = fw.Sizes(full=3, quick=2, smoke=1)
    monkeypatch.delenv(fw.MODE_ENV, raising=False)
    monkeypatch.delenv("BENCH_QUICK", raising=False)
    assert fw.mode() is fw.Mode.FULL and sizes.current() == 3
    monkeypatch.setenv("BENCH_QUICK", "1")
    assert fw.mode() is fw.Mode.QUICK and sizes.current() == 2
    monkeypatch.setenv(fw.MODE_ENV, "smoke")
    assert fw.mode() is fw.Mode.SMOKE and sizes.current() == 1


def test_a_smoke_run_refuses_to_write_latest_json() -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main.main(["--smoke", "--output", str(bench_main.LATEST)])
    assert exit_info.value.code == 2


# --- the results file ----------------------------------------------------------------------


def _ran(name: str, keys: dict[str, Any], **kwargs: Any) -> bench_main.Ran:
    result = fw.ScenarioResult(name, keys, tables=[Table(["a"], [[1.5]])], **kwargs)
    return bench_main.Ran(result, {"date": "2026-12-04T10:00:00+00:00", "mode": "full"})


def test_a_run_replaces_its_scenarios_and_keeps_the_others() -> None:
    first = bench_main.record(
        {},
        [
            _ran("invalidation", {"invalidation.p50_ms": 1.0, "invalidation.stale": 9}),
            _ran("local_deny", {"local_deny.cpu_ratio": 0.09}),
        ],
    )
    second = bench_main.record(
        json.loads(json.dumps(first)),
        [
            _ran("invalidation", {"invalidation.p50_ms": 2.0}),
            _ran("local_deny", dict.fromkeys(["local_deny.cpu_ratio"]), failed="boom"),
            _ran("limiter", dict.fromkeys(["limiter.memory.p50_ms"]), skipped="no redis"),
        ],
    )
    assert second["invalidation"] == {"p50_ms": 2.0}  # replaced whole: no stale key
    assert second["local_deny"] == {"cpu_ratio": 0.09}  # a failed run keeps the last figures
    assert "limiter" not in second and "limiter" not in second["_meta"]["scenarios"]
    assert list(second) == ["invalidation", "local_deny", "_meta"]  # SCENARIOS' order
    meta = second["_meta"]["scenarios"]["invalidation"]
    assert meta["tables"] == [{"headers": ["a"], "rows": [[1.5]]}] and meta["mode"] == "full"


def test_an_older_results_file_is_started_afresh() -> None:
    old = {"limiter": {"p50_ms": 1}, "_meta": {"machine": {}, "scenarios": {"limiter": {}}}}
    fresh = bench_main.record(old, [_ran("local_deny", {"local_deny.cpu_ratio": 0.1})])
    assert list(fresh) == ["local_deny", "_meta"]


def test_every_promised_key_is_read_back_from_the_file(tmp_path: Path) -> None:
    keys = dict.fromkeys(_module("hot_project").KEYS, 1.0)
    missing = dict(keys)
    del missing["hot_project.ratio"]
    runs = [_ran("hot_project", missing)]
    path = tmp_path / "r.json"
    fw.write_json(path, bench_main.record({}, runs))
    assert bench_main.check_written(path, runs) == [
        f"hot_project: hot_project.ratio is missing from {path}"
    ]

    unexplained = {**keys, "hot_project.ratio": None}
    runs = [_ran("hot_project", unexplained)]
    fw.write_json(path, bench_main.record({}, runs))
    assert bench_main.check_written(path, runs) == [
        "hot_project: hot_project.ratio is null and the scenario did not say why"
    ]

    runs = [_ran("hot_project", unexplained, unmeasured={"hot_project.ratio": "no wrk"})]
    fw.write_json(path, bench_main.record({}, runs))
    assert bench_main.check_written(path, runs) == []
