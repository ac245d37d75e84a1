"""``local_deny``: gateway CPU per locally denied request ÷ per admitted select.

One instance. Project "open" has an unreachable limit; project "over" allows 1 request
per minute and has used it, so the instance holds a local deny for its key (the
database said: no room until the window's end) and answers its requests 429 without a
round trip. ``wrk`` (16 connections) sends selects by primary key with the open key,
then with the over key, alternating in rounds (open, over, over, open, …) so that
drifting machine load hits both alike; the gateway process's CPU comes from /proc.

``local_deny.cpu_ratio`` = gateway CPU per 429 ÷ gateway CPU per admitted 2xx select
(target ≤ 0.1). Other figures (requests/s, p50, CPU per request) are in ``_meta``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench import framework as fw
from bench import wrk
from bench.framework import Bench, ScenarioResult
from bench.report import Table

NAME = "local_deny"
KEYS = ["local_deny.cpu_ratio"]
CONNECTIONS = 16
ROWS = 1000


@dataclass(frozen=True)
class Size:
    seconds: float  # per kind, in alternating rounds (BENCH_LOCAL_DENY_S overrides)
    warmup_s: float  # per kind before measuring (0: none)


SIZES = fw.Sizes(
    full=Size(seconds=12.0, warmup_s=1.0),
    quick=Size(seconds=4.0, warmup_s=1.0),
    smoke=Size(seconds=1.0, warmup_s=0.0),
)


def run(bench: Bench) -> ScenarioResult:
    wrk_bin = fw.require_binary("wrk", "wrk")
    size = SIZES.current()
    seconds = float(os.environ.get("BENCH_LOCAL_DENY_S") or size.seconds)
    rounds = 4 if seconds >= 8 else 2 if seconds >= 2 else 1
    open_ = bench.make_project(rows=ROWS)
    over = bench.make_project(rows=ROWS, rate_limit_per_minute=1)
    scripts = {
        name: wrk.write_script(
            bench.root / f"local-deny-{name}.lua", keys=[p["server_key"]], mode="pk", max_id=ROWS
        )
        for name, p in (("admitted", open_), ("denied", over))
    }
    cluster = bench.start_cluster(1, name="local-deny")
    url = cluster.urls[0]
    runs: dict[str, list[wrk.WrkResult]] = {"admitted": [], "denied": []}
    cpu = {"admitted": 0.0, "denied": 0.0}
    try:
        client = fw.HttpClient(url, over["server_key"])
        statuses = [client.query(fw.select_by_pk(1))[0] for _ in range(3)]
        client.close()
        if statuses[-1] != 429:
            raise RuntimeError(f"the over-limit project was not refused: {statuses}")
        for name in scripts if size.warmup_s else ():  # pool, caches, prepared statements
            wrk.run(wrk_bin, [url], scripts[name], seconds=size.warmup_s, connections=CONNECTIONS)
        for r in range(rounds):
            for name in ("admitted", "denied") if r % 2 == 0 else ("denied", "admitted"):
                meter = fw.CpuMeter(bench, cluster)
                meter.start()
                runs[name].append(
                    wrk.run(
                        wrk_bin,
                        [url],
                        scripts[name],
                        seconds=seconds / rounds,
                        connections=CONNECTIONS,
                    )
                )
                meter.stop()
                cpu[name] += meter.gateway_s
    finally:
        bench.stop_cluster(cluster)
    admitted, denied = wrk.combine(runs["admitted"]), wrk.combine(runs["denied"])
    per_ok = cpu["admitted"] * 1000 / max(admitted.requests - admitted.non2xx, 1)
    per_deny = cpu["denied"] * 1000 / max(denied.non2xx, 1)
    cpu_ratio = fw.ratio(per_deny, per_ok)
    figures: dict[str, Any] = {
        "admitted": {
            "rps": admitted.ok_rps,
            "p50_ms": admitted.p50_ms,
            "errors": admitted.non2xx + admitted.socket_errors,
            "gateway_cpu_ms_per_req": round(per_ok, 4),
        },
        "denied": {
            "rps": round(denied.rps - denied.ok_rps, 1),
            "p50_ms": denied.p50_ms,
            "not_denied": denied.requests - denied.non2xx,
            "gateway_cpu_ms_per_req": round(per_deny, 4),
        },
    }
    table = Table(
        ["requests", "answers/s", "p50 ms", "gw CPU ms/req", "÷ admitted"],
        [
            ["admitted select (2xx)", admitted.ok_rps, admitted.p50_ms, per_ok, 1.0],
            ["local deny (429)", figures["denied"]["rps"], denied.p50_ms, per_deny, cpu_ratio],
        ],
    )
    targets = [
        fw.target(
            "local deny: gateway CPU <= 0.1 x an admitted select's",
            "<= 0.1",
            cpu_ratio,
            cpu_ratio is not None and cpu_ratio <= 0.1,
        )
    ]
    notes = [
        f"1 instance, wrk x {CONNECTIONS} connections, {seconds:g} s per kind in {rounds} "
        "alternating rounds; select by primary key; gateway process CPU from /proc."
    ]
    return ScenarioResult(
        NAME, {"local_deny.cpu_ratio": cpu_ratio}, [table], targets, {"figures": figures}, notes
    )
