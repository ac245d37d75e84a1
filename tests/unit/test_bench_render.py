"""docs/performance.md's figures are rendered from bench/results/latest.json, never pasted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import framework as fw
from bench import render
from bench.report import collapse_keys
from bench.scenarios import SCENARIOS


def _results() -> dict[str, Any]:
    return json.loads(render.LATEST.read_text(encoding="utf-8"))


def test_performance_doc_is_in_sync_with_latest_json() -> None:
    current = render.DOC.read_text(encoding="utf-8")
    rendered = render.render_text(current, _results())
    doc, latest = (p.relative_to(render.REPO_ROOT) for p in (render.DOC, render.LATEST))
    assert rendered == current, f"{doc} is out of date with {latest}: run {render.FIX_COMMAND}"


def test_performance_doc_has_a_block_for_every_scenario_and_the_targets() -> None:
    names = render.blocks(render.DOC.read_text(encoding="utf-8"))
    assert sorted(names) == sorted([*SCENARIOS, render.TARGETS_BLOCK])


def test_latest_json_holds_full_or_quick_figures_only() -> None:
    scenarios = _results()["_meta"]["scenarios"]
    assert {facts["mode"] for facts in scenarios.values()} <= {"full", "quick"}


FACTS = {
    "date": "2026-12-04T10:31:05+00:00",
    "mode": "quick",
    "seconds": 12.5,
    "commit": "abc1234",
    "machine": {"cores": 2, "cpu": "AMD EPYC", "loadavg_at_start": [3.2, 2.0, 1.0]},
    "postgres": {"version": "18.6", "durable": True},
    "notes": ["one note"],
    "tables": [{"headers": ["x", "y"], "rows": [["a", 1234.5]]}],
    "targets": [{"name": "t", "goal": "<= 2", "value": 1.5, "verdict": "MET"}],
    "unmeasured": {"local_deny.redis_p50_ms": "no redis-server"},
}
RESULTS = {
    "local_deny": {"cpu_ratio": 0.09, "redis_p50_ms": None},
    "_meta": {"scenarios": {"local_deny": FACTS}},
}
DOC = """# Title

Prose stays as written.

<!-- bench:local_deny -->
stale figures
<!-- /bench -->

<!-- bench:jobs -->
<!-- /bench -->

<!-- bench:targets -->
<!-- /bench -->
"""


def test_the_measured_line_names_the_stolen_cpu_time_when_recorded() -> None:
    facts = {**FACTS, "machine": {**FACTS["machine"], "steal_percent": 12.5}}
    once = render.render_text(DOC, {**RESULTS, "_meta": {"scenarios": {"local_deny": facts}}})
    assert "load average 3.2 at the start, 12.5 % of CPU time stolen by the hypervisor" in once


def test_steal_percent_is_the_steal_share_of_the_time_between_two_readings() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = [100, 0, 10, 500, 0, 0, 0, 10, 0, 0]
    after = [160, 0, 20, 600, 0, 0, 0, 40, 0, 0]  # 200 ticks, 30 of them stolen
    assert fw.steal_percent(before, after) == 15.0
    assert fw.steal_percent(before, before) is None
    assert fw.steal_percent(None, after) is None


def test_render_replaces_only_the_blocks_and_is_idempotent() -> None:
    once = render.render_text(DOC, RESULTS)
    assert once.startswith("# Title\n\nProse stays as written.\n\n<!-- bench:local_deny -->\n")
    assert "stale figures" not in once
    assert render.render_text(once, RESULTS) == once
    assert (
        "_Measured 2026-12-04 10:31 UTC · quick run, 12.5 s · commit `abc1234` · 2 cores "
        "(AMD EPYC), load average 3.2 at the start · PostgreSQL 18.6, durable._"
    ) in once
    assert "_A quick run" in once
    assert "- one note" in once
    assert "| a | 1,234 |" in once  # formatted as the terminal prints it
    assert "| t | <= 2 | 1.50 | MET |" in once
    assert "Left null: `local_deny.redis_p50_ms` (no redis-server)." in once
    assert "Keys: `local_deny.{cpu_ratio,redis_p50_ms}`." in once
    assert "_Not measured yet: `make bench SCENARIO=jobs` fills this in._" in once
    assert "| `local_deny` | t | <= 2 | 1.50 | MET | 2026-12-04 10:31 UTC |" in once


def test_an_unknown_block_is_an_error() -> None:
    with pytest.raises(ValueError, match="bench:nope"):
        render.render_text("<!-- bench:nope -->\n<!-- /bench -->\n", RESULTS)


def test_keys_collapse_by_group_in_declared_order() -> None:
    keys = ["s.b.x", "s.b.y", "s.c", "s.b.z"]
    assert collapse_keys(keys) == ["s.b.{x,y,z}", "s.c"]
