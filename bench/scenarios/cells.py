"""``cells``: the same load with its projects on 1 cell vs spread over 2 cells, and a move.

Two PostgreSQL servers on this one machine: the bench's own (the control database, cell
``home``) and a second one registered as cell ``cell2``. Two gateway instances serve
both. Two sets of projects with the same shape (an ``items`` table of ``ROWS`` rows):

- ``one_cell``: every project on ``home``;
- ``two_cells``: half of them on ``home``, half on ``cell2``.

Each case runs the same wrk load (16 connections per instance, keys picked at random
over its projects), in alternating rounds: ``select`` (a row by primary key: one
admission and one query) and ``admissions`` (``GET /schema``: one admission, the schema
from the instance's cache, no query). Both cells share this machine's 2 cores, so the
figures that matter beside req/s are the CPU per request of each PostgreSQL server and
of the gateway processes: spreading projects over cells must not cost more per request,
and each cell carries only its own projects' share.

Catalog memory per backend: a connection that touches every project's table (what a
sweep does) holds a CacheMemoryContext that grows with the tables it touched
(``pg_backend_memory_contexts``); with projects spread over cells a connection of each
cell touches only that cell's tables.

The move: one project with continuous inserts (one client, retrying 503s) moved from
``cell2`` to ``home`` with ``gateway project move``; the longest gap between two
acknowledged inserts is the write freeze seen by a client, and every acknowledged insert
must be on the target afterwards (``writes_lost`` = 0).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

from bench import framework as fw
from bench import wrk
from bench.framework import Bench, ScenarioResult
from bench.report import Table
from gateway.auth.keys import hash_key
from gateway.cells import directory
from gateway.control.projects import connect
from gateway.db import migrate
from gateway.db.localdb import LocalPostgres

NAME = "cells"
CASES = ("one_cell", "two_cells")
LOADS = ("select", "admissions")
KEYS = (
    [f"cells.{case}.{load}_rps" for case in CASES for load in LOADS]
    + [f"cells.{case}.{load}_cpu_ms_per_req" for case in CASES for load in LOADS]
    + [
        "cells.select_rps_ratio",
        "cells.admissions_rps_ratio",
        "cells.two_cells.home_pg_cpu_ms_per_req",
        "cells.two_cells.cell2_pg_cpu_ms_per_req",
        "cells.one_cell.backend_cache_mb",
        "cells.two_cells.backend_cache_mb",
        "cells.move.write_gap_ms",
        "cells.move.freeze_ms",
        "cells.move.writes_acknowledged",
        "cells.move.writes_lost",
    ]
)
INSTANCES = 2
CONNECTIONS = 16
ROWS = 100
CELL2 = "cell2"


@dataclass(frozen=True)
class Size:
    projects: int  # per case
    seconds: float  # per round and load
    rounds: int
    move_writes_s: float  # of inserts before the move starts


SIZES = fw.Sizes(
    full=Size(projects=200, seconds=10.0, rounds=2, move_writes_s=2.0),
    quick=Size(projects=40, seconds=3.0, rounds=1, move_writes_s=1.0),
    smoke=Size(projects=4, seconds=1.0, rounds=1, move_writes_s=0.5),
)


def _cell_server(bench: Bench) -> LocalPostgres:
    server = LocalPostgres(
        bench.root / "cell2",
        durable=bench.durable,
        max_connections=300,
        extra_settings={"shared_buffers": "256MB"},
    )
    server.start()
    migrate.upgrade(server.url, "heads")
    return server


def _place(bench: Bench, cell_url: str | None, count: int) -> list[dict[str, Any]]:
    """``count`` projects on the cell at ``cell_url`` (None: home), in one transaction per
    database, registered in the control database's directory."""
    url = cell_url or bench.url
    with connect(url) as conn, conn.transaction():
        projects = [
            bench.make_project(conn=conn, rows=ROWS, public_key=False) for _ in range(count)
        ]
    if cell_url is not None:
        with connect(bench.url) as control:
            for p in projects:
                directory.register_project(
                    control, p["id"], p["name"], CELL2, [hash_key(p["server_key"])]
                )
            control.commit()
    return projects


def _cache_mb(url: str, projects: list[dict[str, Any]]) -> float:
    """Bytes used in CacheMemoryContext and its ``index info`` children (the relation and
    index caches)
    by one fresh backend after it touched every project's table (``total_bytes`` grows in
    doubling blocks and hides the difference)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for p in projects:
            conn.execute(f'SELECT 1 FROM "{p["schema_name"]}".items LIMIT 1')
        row = conn.execute(
            "SELECT coalesce(sum(used_bytes), 0) FROM pg_backend_memory_contexts"
            " WHERE name IN ('CacheMemoryContext', 'index info')"
        ).fetchone()
    return round(float(row[0] if row else 0) / 2**20, 2)


def _schema_script(path: Path, keys: list[str]) -> Path:
    lua_keys = ",".join(f'"{k}"' for k in keys)
    path.write_text(
        f"local keys = {{{lua_keys}}}\n"
        "request = function()\n"
        "  local key = keys[math.random(#keys)]\n"
        f'  return wrk.format("GET", "{fw.BASE}/schema",'
        ' {["Authorization"] = "Bearer " .. key})\n'
        "end\n" + wrk.LUA_DONE
    )
    return path


class _Writer(threading.Thread):
    """Inserts one row after another into a project's ``items``, retrying 503s (a moving
    project answers 503 + Retry-After during its freeze); remembers every acknowledged id
    and when it was acknowledged."""

    def __init__(self, urls: list[str], key: str) -> None:
        super().__init__(daemon=True)
        self.clients = [fw.HttpClient(url, key, timeout=10.0) for url in urls]
        self.stop_flag = threading.Event()
        self.acked: list[tuple[float, int]] = []
        self.refused = 0
        self.errors: list[str] = []

    def run(self) -> None:
        body = {
            "query": {
                "operation": "insert",
                "table": "items",
                "data": {"title": "moving", "score": 1},
                "returning": ["id"],
            }
        }
        turn = 0
        while not self.stop_flag.is_set():
            client = self.clients[turn % len(self.clients)]
            turn += 1
            try:
                status, raw = client.query(body["query"])
            except Exception as exc:  # a connection reset during the switch: retried
                self.errors.append(type(exc).__name__)
                time.sleep(0.01)
                continue
            if status == 503:
                self.refused += 1
                time.sleep(0.02)
                continue
            if status >= 300:
                self.errors.append(f"{status} {raw[:200]!r}")
                time.sleep(0.02)
                continue
            rows = orjson.loads(raw).get("data") or []
            if rows:
                self.acked.append((time.perf_counter(), int(rows[0]["id"])))

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(30)
        for client in self.clients:
            client.close()


def _move(bench: Bench, cluster: fw.Cluster, project: dict[str, Any], seconds: float) -> dict:
    writer = _Writer(cluster.urls, project["server_key"])
    writer.start()
    time.sleep(seconds)
    started = time.perf_counter()
    env = {**os.environ, "DATABASE_URL": bench.url}
    command = [sys.executable, "-m", "gateway", "project", "move", project["name"], "--to"]
    done = subprocess.run(
        [*command, directory.HOME, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    finished = time.perf_counter()
    time.sleep(seconds)
    writer.finish()
    if done.returncode != 0:
        return {"failed": (done.stderr or done.stdout)[-500:]}
    try:
        report = orjson.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        report = {}
    stamps = [t for t, _ in writer.acked]
    gaps = [b - a for a, b in itertools.pairwise(stamps) if b >= started - 1.0]
    ids = {i for _, i in writer.acked}
    with psycopg.connect(bench.url, autocommit=True) as conn:
        present = {
            r[0]
            for r in conn.execute(
                f'SELECT id FROM "{project["schema_name"]}".items WHERE title = %s', ["moving"]
            ).fetchall()
        }
    return {
        "write_gap_ms": round(max(gaps, default=0.0) * 1000, 1),
        "freeze_ms": report.get("freeze_ms"),
        "writes_acknowledged": len(ids),
        "writes_lost": len(ids - present),
        "refused_503": writer.refused,
        "errors": writer.errors[:5],
        "move_s": round(finished - started, 2),
    }


def run(bench: Bench) -> ScenarioResult:
    wrk_bin = fw.require_binary("wrk", "wrk")
    size = SIZES.current()
    server = _cell_server(bench)
    figures: dict[str, Any] = {case: {} for case in CASES}
    try:
        with connect(bench.url) as control:
            directory.add_cell(control, CELL2, server.url)
            control.commit()
        half = size.projects // 2
        sets = {
            "one_cell": _place(bench, None, size.projects),
            "two_cells": _place(bench, None, half)
            + _place(bench, server.url, size.projects - half),
        }
        mover = _place(bench, server.url, 1)[0]
        figures["one_cell"]["backend_cache_mb"] = _cache_mb(bench.url, sets["one_cell"])
        on_home = sets["two_cells"][:half]
        on_cell2 = sets["two_cells"][half:]
        figures["two_cells"]["backend_cache_mb"] = max(
            _cache_mb(bench.url, on_home), _cache_mb(server.url, on_cell2)
        )
        cluster = bench.start_cluster(INSTANCES, name="cells")
        try:
            scripts = {}
            for case, projects in sets.items():
                keys = [p["server_key"] for p in projects]
                scripts[case, "select"] = wrk.write_script(
                    bench.root / f"cells-{case}-select.lua", keys=keys, mode="pk", max_id=ROWS
                )
                scripts[case, "admissions"] = _schema_script(
                    bench.root / f"cells-{case}-schema.lua", keys
                )
                # warm-up: every project on every instance (catalog caches, routes)
                walk = wrk.write_script(
                    bench.root / f"cells-{case}-walk.lua",
                    keys=keys,
                    mode="pk",
                    max_id=ROWS,
                    sequential=True,
                )
                wrk.run(wrk_bin, cluster.urls, walk, seconds=1.0, connections=4)
            totals: dict[tuple[str, str], dict[str, float]] = {}
            for _ in range(size.rounds):
                for load in LOADS:
                    for case in CASES:
                        meter = fw.CpuMeter(bench, cluster)
                        cell_before = fw.cpu_seconds(fw.server_pids(server))
                        meter.start()
                        result = wrk.run(
                            wrk_bin,
                            cluster.urls,
                            scripts[case, load],
                            seconds=size.seconds,
                            connections=CONNECTIONS,
                        )
                        meter.stop()
                        cell_s = fw.cpu_seconds(fw.server_pids(server)) - cell_before
                        t = totals.setdefault((case, load), {})
                        t["ok"] = t.get("ok", 0) + result.requests - result.non2xx
                        t["seconds"] = t.get("seconds", 0) + result.seconds
                        t["gateway_s"] = t.get("gateway_s", 0) + meter.gateway_s
                        t["home_s"] = t.get("home_s", 0) + meter.postgres_s
                        t["cell2_s"] = t.get("cell2_s", 0) + max(cell_s, 0.0)
                        t["errors"] = t.get("errors", 0) + result.non2xx + result.socket_errors
            for (case, load), t in totals.items():
                ok = max(t["ok"], 1)
                f = figures[case]
                f[f"{load}_rps"] = round(t["ok"] / max(t["seconds"], 1e-9), 1)
                f[f"{load}_cpu_ms_per_req"] = round(
                    (t["gateway_s"] + t["home_s"] + t["cell2_s"]) * 1000 / ok, 3
                )
                f[f"{load}_home_pg_ms"] = round(t["home_s"] * 1000 / ok, 3)
                f[f"{load}_cell2_pg_ms"] = round(t["cell2_s"] * 1000 / ok, 3)
                f[f"{load}_gateway_ms"] = round(t["gateway_s"] * 1000 / ok, 3)
                f[f"{load}_errors"] = t["errors"]
            move = _move(bench, cluster, mover, size.move_writes_s)
        finally:
            bench.stop_cluster(cluster)
    finally:
        server.destroy()
    one, two = figures["one_cell"], figures["two_cells"]
    keys: dict[str, Any] = {}
    for case in CASES:
        for load in LOADS:
            keys[f"cells.{case}.{load}_rps"] = figures[case].get(f"{load}_rps")
            keys[f"cells.{case}.{load}_cpu_ms_per_req"] = figures[case].get(
                f"{load}_cpu_ms_per_req"
            )
        keys[f"cells.{case}.backend_cache_mb"] = figures[case]["backend_cache_mb"]
    keys["cells.select_rps_ratio"] = fw.ratio(two.get("select_rps"), one.get("select_rps"))
    keys["cells.admissions_rps_ratio"] = fw.ratio(
        two.get("admissions_rps"), one.get("admissions_rps")
    )
    # select: every request is one admission + one query in its project's cell
    keys["cells.two_cells.home_pg_cpu_ms_per_req"] = two.get("select_home_pg_ms")
    keys["cells.two_cells.cell2_pg_cpu_ms_per_req"] = two.get("select_cell2_pg_ms")
    for k in ("write_gap_ms", "freeze_ms", "writes_acknowledged", "writes_lost"):
        keys[f"cells.move.{k}"] = move.get(k)
    unmeasured = {}
    if "failed" in move:
        unmeasured = {k: f"the move failed: {move['failed']}" for k in keys if ".move." in k}
    elif move.get("freeze_ms") is None:
        unmeasured["cells.move.freeze_ms"] = "the move command printed no freeze_ms"
    rows = [
        [
            f"{case} / {load}",
            figures[case].get(f"{load}_rps"),
            figures[case].get(f"{load}_gateway_ms"),
            figures[case].get(f"{load}_home_pg_ms"),
            figures[case].get(f"{load}_cell2_pg_ms"),
            figures[case].get(f"{load}_cpu_ms_per_req"),
            figures[case].get(f"{load}_errors"),
        ]
        for load in LOADS
        for case in CASES
    ]
    table = Table(
        [
            "case / load",
            "ok req/s",
            "gw CPU ms/req",
            "home PG ms/req",
            "cell2 PG ms/req",
            "total CPU ms/req",
            "errors",
        ],
        rows,
    )
    memory = Table(
        ["case", "catalog cache used by a backend that touched its cell's tables (MB)"],
        [[case, figures[case]["backend_cache_mb"]] for case in CASES],
    )
    lost = move.get("writes_lost")
    targets = [
        fw.target("a move loses no acknowledged write", "== 0", lost, lost == 0),
        fw.target(
            "2 cells cost no more CPU per select than 1",
            "<= 1.1 x",
            fw.ratio(two.get("select_cpu_ms_per_req"), one.get("select_cpu_ms_per_req")),
            (two.get("select_cpu_ms_per_req") or 0)
            <= 1.1 * (one.get("select_cpu_ms_per_req") or 0),
        ),
    ]
    notes = [
        f"{size.projects} projects per case, {ROWS} rows each, {INSTANCES} instances, "
        f"{CONNECTIONS} wrk connections per instance, {size.rounds} round(s) of "
        f"{size.seconds:g} s per load and case, alternating",
        "both PostgreSQL servers share this machine's cores: req/s can't grow with a second "
        "cell here; CPU per request per cell is the figure that carries to separate machines",
        f"move: {move}",
    ]
    return ScenarioResult(
        NAME,
        keys,
        [table, memory],
        targets,
        {"figures": figures, "move": move},
        notes,
        unmeasured=unmeasured,
    )
