"""``overload``: goodput at 10x overload vs at the knee, same instances, same run.

3 instances planned at 3 pooled connections each (``GATEWAY_DB_MAX_CONNECTIONS=18``,
3 reserved, 3 admin: ``floor((18 − 3 − 3 − 3 × 1) / 3) = 3``), select by primary key with
one project's server key. ``wrk`` (one process per instance) first runs 8 connections
per instance (the knee: about what the pools can serve), then 200 connections in all
(67 + 67 + 66), each phase ``BENCH_OVERLOAD_S`` seconds (default 10) in alternating
rounds so drifting machine load hits both alike. wrk's clients retry at once: they
ignore ``Retry-After``, the worst case for the gateway.

- ``knee_rps`` / ``overload_rps``: 2xx answers per second at 8 / 200 connections.
- ``goodput_ratio`` = overload_rps ÷ knee_rps (target ≥ 0.8).
- ``max_ms``: the slowest answer of any kind at 200 connections (target: pool timeout
  + 1 s = 3,000 ms).
- ``shed_cpu_ms_per_req``: gateway CPU per refused (non-2xx) answer. Measured on a second
  cluster of 3 that refuses at once whatever can't be served now
  (``GATEWAY_OVERLOAD_QUEUE_MAX=0``: no waiting at the overload gate; a gateway without
  the gate ignores the variable and refuses at its pool's full queue), under the same
  200 connections for half the time: (gateway CPU − its 2xx answers × the knee's CPU
  per 2xx) ÷ its refusals. (At 200 connections on the main cluster few requests are
  refused, most of them only at their deadline, which says little about their cost.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench import framework as fw
from bench import wrk
from bench.framework import Bench, ScenarioResult
from bench.report import Table

NAME = "overload"
KEYS = [
    "overload.knee_rps",
    "overload.overload_rps",
    "overload.goodput_ratio",
    "overload.max_ms",
    "overload.shed_cpu_ms_per_req",
]
INSTANCES = 3
POOL_TIMEOUT_S = 2.0
BUDGET_ENV = {
    "GATEWAY_DB_MAX_CONNECTIONS": "18",
    "GATEWAY_DB_RESERVED_CONNECTIONS": "3",
    "GATEWAY_DB_ADMIN_CONNECTIONS": "3",
    "GATEWAY_POOL_TIMEOUT_S": str(POOL_TIMEOUT_S),
}
KNEE_CONNECTIONS = [8, 8, 8]
OVERLOAD_CONNECTIONS = [67, 67, 66]
ROWS = 1000


@dataclass(frozen=True)
class Size:
    seconds: float  # per load (BENCH_OVERLOAD_S overrides); the refusing cluster: half
    warmup_s: float  # at the knee before measuring, per cluster (0: none)


SIZES = fw.Sizes(
    full=Size(seconds=10.0, warmup_s=2.0),
    quick=Size(seconds=3.0, warmup_s=2.0),
    smoke=Size(seconds=1.0, warmup_s=0.0),
)


def run(bench: Bench) -> ScenarioResult:
    wrk_bin = fw.require_binary("wrk", "wrk")
    size = SIZES.current()
    seconds = float(os.environ.get("BENCH_OVERLOAD_S") or size.seconds)
    rounds = 2 if seconds >= 6 else 1
    project = bench.make_project(rows=ROWS)
    script = wrk.write_script(
        bench.root / "overload.lua", keys=[project["server_key"]], mode="pk", max_id=ROWS
    )
    cluster = bench.start_cluster(INSTANCES, env=BUDGET_ENV, name="overload")
    runs: dict[str, list[wrk.WrkResult]] = {"knee": [], "overload": []}
    cpu = {"knee": 0.0, "overload": 0.0}
    try:
        if size.warmup_s:
            wrk.run(
                wrk_bin, cluster.urls, script, seconds=size.warmup_s, connections=KNEE_CONNECTIONS
            )
        for r in range(rounds):
            for phase in ("knee", "overload") if r % 2 == 0 else ("overload", "knee"):
                meter = fw.CpuMeter(bench, cluster)
                meter.start()
                runs[phase].append(
                    wrk.run(
                        wrk_bin,
                        cluster.urls,
                        script,
                        seconds=seconds / rounds,
                        connections=KNEE_CONNECTIONS if phase == "knee" else OVERLOAD_CONNECTIONS,
                    )
                )
                meter.stop()
                cpu[phase] += meter.gateway_s
    finally:
        bench.stop_cluster(cluster)
    # the cost of a refusal: a cluster that refuses at once instead of queueing
    refusing = bench.start_cluster(
        INSTANCES, env={**BUDGET_ENV, "GATEWAY_OVERLOAD_QUEUE_MAX": "0"}, name="refusing"
    )
    try:
        if size.warmup_s:
            wrk.run(
                wrk_bin,
                refusing.urls,
                script,
                seconds=size.warmup_s / 2,
                connections=KNEE_CONNECTIONS,
            )
        meter = fw.CpuMeter(bench, refusing)
        meter.start()
        refused = wrk.run(
            wrk_bin, refusing.urls, script, seconds=seconds / 2, connections=OVERLOAD_CONNECTIONS
        )
        meter.stop()
        cpu["refusing"] = meter.gateway_s
    finally:
        bench.stop_cluster(refusing)
    knee, over = wrk.combine(runs["knee"]), wrk.combine(runs["overload"])
    knee_ok = max(knee.requests - knee.non2xx, 1)
    knee_cpu_ms = cpu["knee"] * 1000 / knee_ok
    shed = over.non2xx + over.socket_errors
    shed_cpu: float | None = None
    if refused.non2xx:
        refused_ok = refused.requests - refused.non2xx
        spent_ms = cpu["refusing"] * 1000 - refused_ok * knee_cpu_ms
        shed_cpu = round(max(0.0, spent_ms) / refused.non2xx, 4)
    goodput = fw.ratio(over.ok_rps, knee.ok_rps)
    bound_ms = (POOL_TIMEOUT_S + 1.0) * 1000
    keys = {
        "overload.knee_rps": knee.ok_rps,
        "overload.overload_rps": over.ok_rps,
        "overload.goodput_ratio": goodput,
        "overload.max_ms": over.max_ms,
        "overload.shed_cpu_ms_per_req": shed_cpu,
    }
    figures: dict[str, Any] = {}
    rows = []
    for phase, res, conns in (
        ("knee", knee, KNEE_CONNECTIONS),
        ("overload", over, OVERLOAD_CONNECTIONS),
        ("refusing", refused, OVERLOAD_CONNECTIONS),
    ):
        ok = res.requests - res.non2xx
        figures[phase] = {
            "connections": sum(conns),
            "requests": res.requests,
            "ok": ok,
            "non2xx": res.non2xx,
            "socket_errors": res.socket_errors,
            "ok_rps": res.ok_rps,
            "rps": res.rps,
            "p50_ms": res.p50_ms,
            "p99_ms": res.p99_ms,
            "max_ms": res.max_ms,
            "gateway_cpu_s": round(cpu[phase], 2),
            "gateway_cpu_ms_per_answer": round(cpu[phase] * 1000 / max(res.requests, 1), 4),
        }
        rows.append(
            [
                f"{phase} ({sum(conns)} connections)",
                res.ok_rps,
                res.rps - res.ok_rps,
                res.p50_ms,
                res.p99_ms,
                res.max_ms,
                figures[phase]["gateway_cpu_ms_per_answer"],
            ]
        )
    table = Table(
        ["load", "2xx/s", "non-2xx/s", "p50 ms", "p99 ms", "max ms", "gw CPU ms/answer"], rows
    )
    targets = [
        fw.target(
            "overload: 2xx/s at 200 connections >= 0.8 x at 8 per instance",
            ">= 0.8",
            goodput,
            goodput is not None and goodput >= 0.8,
        ),
        fw.target(
            "overload: slowest answer <= pool timeout + 1 s",
            f"<= {bound_ms:.0f} ms",
            over.max_ms,
            over.max_ms <= bound_ms,
        ),
    ]
    notes = [
        f"{INSTANCES} instances x pool 3, wrk {'+'.join(map(str, KNEE_CONNECTIONS))} vs "
        f"{'+'.join(map(str, OVERLOAD_CONNECTIONS))} connections, {seconds:g} s each in "
        f"{rounds} round(s); select by primary key; clients ignore Retry-After. "
        f"Refused at 200 connections: {shed} answers (non-2xx {over.non2xx}, socket errors "
        f"{over.socket_errors}). 'refusing': another cluster with GATEWAY_OVERLOAD_QUEUE_MAX=0, "
        f"{seconds / 2:g} s; shed CPU per refusal = its CPU minus its 2xx answers at the "
        f"knee's CPU per 2xx ({knee_cpu_ms:.3f} ms)."
    ]
    return ScenarioResult(NAME, keys, [table], targets, {"figures": figures}, notes)
