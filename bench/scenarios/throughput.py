"""``throughput``: requests/s through 2 instances, everything on vs admission and log off.

Clusters of 2 gateway instances run side by side on the same database: one as shipped,
one with ``GATEWAY_BENCH_DISABLE_ADMISSION=1`` and ``GATEWAY_BENCH_DISABLE_REQUEST_LOG=1``
(bench-only settings; "off" still looks the key up, one round trip without counters, as
the admission implements the switch). For each case, ``wrk`` (one process per instance,
16 connections each, a Lua script that sets the key header and picks a random primary
key) runs against each cluster in turn. Cases: select by primary key, a 100-row select
(range on the key, ordered), and a single insert. All requests use one project's server
key (one hot admission row).

Duration: ``Size.seconds`` of load per variant and case (``BENCH_THROUGHPUT_S``
overrides it), after a short warm-up, in rounds of at least 3 s (at most 5) whose order
alternates (on/uncoal/off, off/uncoal/on, ...) so that the other load on a shared
machine hits every variant alike.

rps counts 2xx answers only (non-2xx are shown). CPU per request comes from /proc: the
gateway processes' and all PostgreSQL processes' user+system time during the run.

Coalesced admission: a third cluster, "uncoal", runs as shipped but with
``GATEWAY_ADMISSION_COALESCE=0`` (one admission statement per request), in the same
alternating rounds, so the before/after of the coalescing is one run's figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench import framework as fw
from bench import wrk
from bench.framework import Bench, ScenarioResult
from bench.report import Table

NAME = "throughput"
CASES = [("select_by_pk", "pk"), ("select_100", "rows100"), ("insert", "insert")]
KEYS = [
    f"throughput.{case}.{k}"
    for case, _ in CASES
    for k in (
        "rps",
        "p50_ms",
        "p99_ms",
        "on_vs_off_ratio",
        "pg_cpu_ms_per_req",
        "pg_cpu_ms_per_req_off",
        "pg_cpu_on_vs_off_ratio",
        "uncoalesced_rps",
        "uncoalesced_on_vs_off_ratio",
        "pg_cpu_ms_per_req_uncoalesced",
    )
]
ROWS = 10_000
OFF_ENV = {"GATEWAY_BENCH_DISABLE_ADMISSION": "1", "GATEWAY_BENCH_DISABLE_REQUEST_LOG": "1"}
UNCOAL_ENV = {"GATEWAY_ADMISSION_COALESCE": "0"}
CONNECTIONS = 16
VARIANTS = ("on", "uncoal", "off")


@dataclass(frozen=True)
class Size:
    seconds: float  # of load per variant and case (BENCH_THROUGHPUT_S overrides)
    warmup_s: float  # per variant and case before measuring (0: none)


SIZES = fw.Sizes(
    full=Size(seconds=15.0, warmup_s=1.0),
    quick=Size(seconds=3.0, warmup_s=1.0),
    smoke=Size(seconds=1.0, warmup_s=0.0),
)


def run(bench: Bench) -> ScenarioResult:
    wrk_bin = fw.require_binary("wrk", "wrk")
    size = SIZES.current()
    seconds = float(os.environ.get("BENCH_THROUGHPUT_S") or size.seconds)
    rounds = max(1, min(5, int(seconds // 3)))  # wrk runs of >= 3 s
    project = bench.make_project(rows=ROWS)
    clusters: dict[str, fw.Cluster] = {}
    figures: dict[str, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    try:
        clusters["on"] = bench.start_cluster(2, name="tp-on")
        clusters["off"] = bench.start_cluster(2, env=OFF_ENV, name="tp-off")
        clusters["uncoal"] = bench.start_cluster(2, env=UNCOAL_ENV, name="tp-uncoal")
        for case, mode in CASES:
            script = wrk.write_script(
                bench.root / f"tp-{mode}.lua",
                keys=[project["server_key"]],
                mode=mode,
                max_id=ROWS,
            )
            for variant in VARIANTS if size.warmup_s else ():  # pools, caches, statements
                wrk.run(
                    wrk_bin,
                    clusters[variant].urls,
                    script,
                    seconds=size.warmup_s,
                    connections=CONNECTIONS,
                )
            runs: dict[str, list[wrk.WrkResult]] = {v: [] for v in VARIANTS}
            meters = {v: fw.CpuMeter(bench, clusters[v]) for v in VARIANTS}
            if case == "select_by_pk":
                bench.reset_stat_statements()
            for r in range(rounds):
                # alternate the order so that drifting machine load hits both alike
                for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                    meters[variant].start()
                    runs[variant].append(
                        wrk.run(
                            wrk_bin,
                            clusters[variant].urls,
                            script,
                            seconds=seconds / rounds,
                            connections=CONNECTIONS,
                        )
                    )
                    meters[variant].stop()
                    meters[variant].accumulate()
            if case == "select_by_pk":
                details["pg_stat_statements_select_by_pk_on_and_off"] = bench.top_statements(6)
            for variant in VARIANTS:
                result = wrk.combine(runs[variant])
                meter = meters[variant]
                ok = max(result.requests - result.non2xx, 1)
                figures[f"{case}.{variant}"] = {
                    "rps": result.ok_rps,
                    "p50_ms": result.p50_ms,
                    "p99_ms": result.p99_ms,
                    "non2xx": result.non2xx,
                    "socket_errors": result.socket_errors,
                    "gateway_cpu_ms_per_req": round(meter.total_gateway_s * 1000 / ok, 3),
                    "postgres_cpu_ms_per_req": round(meter.total_postgres_s * 1000 / ok, 3),
                }
    finally:
        for cluster in clusters.values():
            bench.stop_cluster(cluster)

    keys: dict[str, Any] = {}
    rows = []
    uncoal_rows: list[list[Any]] = []
    targets = []
    for case, _ in CASES:
        on, off = figures[f"{case}.on"], figures[f"{case}.off"]
        r = fw.ratio(on["rps"], off["rps"])
        keys[f"throughput.{case}.rps"] = on["rps"]
        keys[f"throughput.{case}.p50_ms"] = on["p50_ms"]
        keys[f"throughput.{case}.p99_ms"] = on["p99_ms"]
        keys[f"throughput.{case}.on_vs_off_ratio"] = r
        unco = figures[f"{case}.uncoal"]
        keys[f"throughput.{case}.pg_cpu_ms_per_req"] = on["postgres_cpu_ms_per_req"]
        keys[f"throughput.{case}.pg_cpu_ms_per_req_off"] = off["postgres_cpu_ms_per_req"]
        keys[f"throughput.{case}.pg_cpu_on_vs_off_ratio"] = fw.ratio(
            on["postgres_cpu_ms_per_req"], off["postgres_cpu_ms_per_req"]
        )
        keys[f"throughput.{case}.uncoalesced_rps"] = unco["rps"]
        keys[f"throughput.{case}.uncoalesced_on_vs_off_ratio"] = fw.ratio(unco["rps"], off["rps"])
        keys[f"throughput.{case}.pg_cpu_ms_per_req_uncoalesced"] = unco["postgres_cpu_ms_per_req"]
        uncoal_rows.append(
            [
                case,
                unco["rps"],
                on["rps"],
                keys[f"throughput.{case}.uncoalesced_on_vs_off_ratio"],
                r,
                unco["postgres_cpu_ms_per_req"],
                on["postgres_cpu_ms_per_req"],
                off["postgres_cpu_ms_per_req"],
                unco["gateway_cpu_ms_per_req"],
                on["gateway_cpu_ms_per_req"],
            ]
        )
        rows.append(
            [
                case,
                on["rps"],
                on["p50_ms"],
                on["p99_ms"],
                off["rps"],
                off["p50_ms"],
                off["p99_ms"],
                r,
                on["gateway_cpu_ms_per_req"],
                off["gateway_cpu_ms_per_req"],
                on["postgres_cpu_ms_per_req"],
                off["postgres_cpu_ms_per_req"],
                f"{on['non2xx'] + on['socket_errors']} / {off['non2xx'] + off['socket_errors']}",
            ]
        )
        targets.append(
            fw.target(
                f"throughput {case}: on >= 0.9 x off", ">= 0.9", r, r is not None and r >= 0.9
            )
        )
        cpu = keys[f"throughput.{case}.pg_cpu_on_vs_off_ratio"]
        targets.append(
            fw.target(
                f"throughput {case}: PostgreSQL CPU per request on <= 1.2 x off",
                "<= 1.2",
                cpu,
                cpu is not None and cpu <= 1.2,
            )
        )
    pk = keys["throughput.select_by_pk.rps"]
    targets.insert(
        0,
        fw.target(
            "select-by-pk >= 1,500 req/s with 2 instances",
            ">= 1500",
            pk,
            pk is not None and pk >= 1500,
        ),
    )
    table = Table(
        [
            "case",
            "on rps",
            "on p50 ms",
            "on p99 ms",
            "off rps",
            "off p50 ms",
            "off p99 ms",
            "on/off",
            "gw CPU ms/req on",
            "gw CPU ms/req off",
            "PG CPU ms/req on",
            "PG CPU ms/req off",
            "errors on / off",
        ],
        rows,
    )
    uncoal_table = Table(
        [
            "case",
            "rps coalescing off",
            "rps coalescing on",
            "÷ off (coalescing off)",
            "÷ off (coalescing on)",
            "PG CPU ms/req coalescing off",
            "PG CPU ms/req coalescing on",
            "PG CPU ms/req admission off",
            "gw CPU ms/req coalescing off",
            "gw CPU ms/req coalescing on",
        ],
        uncoal_rows,
    )
    details["figures"] = figures
    notes = [
        f"2 instances per variant, wrk x 2 (one per instance) x {CONNECTIONS} connections, "
        f"{seconds:g} s per variant in {rounds} alternating round(s) after a "
        f"{size.warmup_s:g} s warm-up; "
        "'off' = admission and request log disabled; one project, server key; items table of "
        f"{ROWS:,} rows; rps counts 2xx answers."
    ]
    notes.append(
        "second table: the same 'on' cluster against a third one with coalesced admission "
        "off (GATEWAY_ADMISSION_COALESCE=0), same rounds."
    )
    return ScenarioResult(NAME, keys, [table, uncoal_table], targets, details, notes)
