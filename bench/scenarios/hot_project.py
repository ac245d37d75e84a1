"""``hot_project``: one project taking all the load vs the same load over 1000 projects.

3 instances, ``wrk`` x 3 (one per instance, 16 connections each), select by primary key.
"single": every request carries one project's server key (limit unreachable), so every
admission updates the same counter row. "spread": every request picks one of 1000
projects' keys at random (each project has its own small ``items`` table). The figure is
admitted (2xx) requests per second; the target is single >= 0.5 x spread. Projects are
provisioned in batches of 50 per transaction. Before each measured run a warm-up walks
the keys in order on every instance until each instance has seen every project (their
metadata caches are warm, as in a steady state), then 2 s of the measured load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench import framework as fw
from bench import wrk
from bench.framework import Bench, ScenarioResult
from bench.report import Table

NAME = "hot_project"
KEYS = ["hot_project.single_rps", "hot_project.spread_rps", "hot_project.ratio"]
INSTANCES = 3
ROWS = 100
CONNECTIONS = 16
BATCH = 50


@dataclass(frozen=True)
class Size:
    seconds: float  # of measured load per case (BENCH_HOT_S overrides)
    projects: int  # "spread" (BENCH_HOT_PROJECTS overrides)
    walk_s: float  # per warm-up pass that walks every key on every instance (up to 5)
    warm_load_s: float  # of the measured load, unmeasured, right before it (0: none)


SIZES = fw.Sizes(
    full=Size(seconds=25.0, projects=1000, walk_s=3.0, warm_load_s=2.0),
    quick=Size(seconds=3.0, projects=1000, walk_s=3.0, warm_load_s=2.0),
    smoke=Size(seconds=1.0, projects=20, walk_s=1.0, warm_load_s=0.0),
)


def _provision(bench: Bench, count: int) -> list[dict[str, Any]]:
    from gateway.control.projects import connect

    projects = []
    with connect(bench.url) as conn:
        for start in range(0, count, BATCH):
            with conn.transaction():
                projects += [
                    bench.make_project(conn=conn, rows=ROWS, public_key=False)
                    for _ in range(min(BATCH, count - start))
                ]
    return projects


def run(bench: Bench) -> ScenarioResult:
    wrk_bin = fw.require_binary("wrk", "wrk")
    size = SIZES.current()
    seconds = float(os.environ.get("BENCH_HOT_S") or size.seconds)
    spread_count = int(os.environ.get("BENCH_HOT_PROJECTS") or size.projects)
    projects = _provision(bench, spread_count)
    hot = projects[0]
    figures: dict[str, Any] = {}
    cluster = bench.start_cluster(INSTANCES, name="hot")
    try:
        for case, keys in (
            ("single", [hot["server_key"]]),
            ("spread", [p["server_key"] for p in projects]),
        ):
            script = wrk.write_script(
                bench.root / f"hot-{case}.lua", keys=keys, mode="pk", max_id=ROWS
            )
            # warm-up: every key on every instance at least once (metadata caches), then
            # the measured load for a moment
            warm = wrk.write_script(
                bench.root / f"hot-{case}-warm.lua",
                keys=keys,
                mode="pk",
                max_id=ROWS,
                sequential=True,
            )
            for _ in range(5):
                w = wrk.run(
                    wrk_bin, cluster.urls, warm, seconds=size.walk_s, connections=CONNECTIONS
                )
                if min(p["requests"] for p in w.processes) >= len(keys):
                    break
            if size.warm_load_s:
                wrk.run(
                    wrk_bin, cluster.urls, script, seconds=size.warm_load_s, connections=CONNECTIONS
                )
            meter = fw.CpuMeter(bench, cluster)
            meter.start()
            result = wrk.run(
                wrk_bin, cluster.urls, script, seconds=seconds, connections=CONNECTIONS
            )
            meter.stop()
            ok = max(result.requests - result.non2xx, 1)
            figures[case] = {
                "rps": result.ok_rps,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "errors": result.non2xx + result.socket_errors,
                "gateway_cpu_ms_per_req": round(meter.gateway_s * 1000 / ok, 3),
                "postgres_cpu_ms_per_req": round(meter.postgres_s * 1000 / ok, 3),
            }
    finally:
        bench.stop_cluster(cluster)
    single, spread = figures["single"]["rps"], figures["spread"]["rps"]
    r = fw.ratio(single, spread)
    keys = {
        "hot_project.single_rps": single,
        "hot_project.spread_rps": spread,
        "hot_project.ratio": r,
    }
    rows = [
        [
            f"{case} ({1 if case == 'single' else spread_count} project(s))",
            f["rps"],
            fw.ratio(f["rps"], spread),
            f["p50_ms"],
            f["p99_ms"],
            f["gateway_cpu_ms_per_req"],
            f["postgres_cpu_ms_per_req"],
            f["errors"],
        ]
        for case, f in figures.items()
    ]
    table = Table(
        [
            "load",
            "admitted rps",
            "÷ spread",
            "p50 ms",
            "p99 ms",
            "gw CPU ms/req",
            "PG CPU ms/req",
            "errors",
        ],
        rows,
    )
    targets = [
        fw.target("hot single project >= 0.5 x spread", ">= 0.5", r, r is not None and r >= 0.5)
    ]
    notes = [
        f"{INSTANCES} instances, wrk x {INSTANCES} x {CONNECTIONS} connections, "
        f"{seconds:g} s per case after a warm-up that reaches every project on every instance; "
        "select by primary key."
    ]
    return ScenarioResult(NAME, keys, [table], targets, {"figures": figures}, notes)
