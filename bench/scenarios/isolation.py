"""``isolation``: the noisy neighbour (issue 20). A victim project's select p95 and
realtime delay, calm vs while an attacker project runs one attack at a time, over 2
instances.

The victim runs selects by primary key, one after the other, alternating between the
instances, for ``seconds`` calm right before each attack and then for ``seconds`` under
it; the key ``isolation.<attack>.victim_p95_ratio`` is p95 under the attack ÷ that calm p95 (target
<= 1.5). During every attack a watcher asks each instance's ``/healthz`` every 0.2 s
with a 1 s timeout; ``isolation.instance_stalls`` counts the attacks during which some
instance did not answer (target 0). Attacker requests run at the free plan's rate limit
(100/minute, set on each attack's own attacker project, paced over the attack's
threads); their status codes are
recorded: an attack the gateway refuses with a 4xx is defended, not broken.

Attacks: ``like_regex`` (realtime ``like '%a%a%a%a%a%b'`` streams replaying 5,000-char
rows from ``since=0-0``), ``jsonb_contains`` (realtime ``contains`` of 50 objects over
rows of 12,000), ``query_contains`` (``/query`` contains with a ~90 KB value against a
40,000-element row), ``slow_write`` (a write transaction of the attacker held for the
statement timeout, by plain SQL; the victim's realtime delay is measured here:
``isolation.realtime_delay_ms``, the p95 of commit → event, target <= 1000),
``big_batch`` (``/batch`` of 20 × ``limit 1000`` over a 4 MB table), ``slow_jobs`` (two
attacker projects whose job endpoint hangs 30 s; ``isolation.slow_jobs.victim_wait_ms``
is the worst enqueue → arrival of the victim's jobs) and ``slow_queries`` (8 concurrent
slow allowed selects: the pool share).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench import framework as fw
from bench.framework import BASE, Bench, ScenarioResult
from bench.report import Table

NAME = "isolation"
ATTACKS = (
    "like_regex",
    "jsonb_contains",
    "query_contains",
    "slow_write",
    "big_batch",
    "slow_jobs",
    "slow_queries",
)
KEYS = [
    *(f"isolation.{a}.victim_p95_ratio" for a in ATTACKS),
    "isolation.realtime_delay_ms",
    "isolation.instance_stalls",
    "isolation.slow_jobs.victim_wait_ms",
]
INSTANCES = 2
FREE_RATE_PER_MIN = 100
STATEMENT_TIMEOUT_MS = 4000
HANG_S = 30.0
ENV = {
    "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true",
    "GATEWAY_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
}
ATTACK_TABLE: dict[str, Any] = {
    "name": "docs",
    "client_read": True,
    "client_write": True,
    "realtime": True,
    "columns": [
        {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
        {"name": "body", "type": "text"},
        {"name": "meta", "type": "jsonb"},
    ],
}
VICTIM_TABLE = {**fw.ITEMS_TABLE, "realtime": True}


@dataclass(frozen=True)
class Size:
    seconds: float  # victim selects per phase (calm, and each attack)
    streams: int  # attacker realtime streams open at once
    victim_jobs: int  # victim jobs enqueued during slow_jobs


SIZES = fw.Sizes(
    full=Size(seconds=10.0, streams=4, victim_jobs=10),
    quick=Size(seconds=4.0, streams=3, victim_jobs=4),
    smoke=Size(seconds=1.0, streams=1, victim_jobs=1),
)


# ---------------------------------------------------------------- the victim


def _victim_p95(urls: list[str], key: str, seconds: float) -> tuple[float | None, int]:
    """p95 (ms) of the victim's selects by primary key over ``seconds``, and the non-200s."""
    clients = [fw.HttpClient(u, key, timeout=30.0) for u in urls]
    latencies: list[float] = []
    bad = 0
    end = time.monotonic() + seconds
    i = 0
    try:
        while time.monotonic() < end:
            started = time.monotonic()
            status, _ = clients[i % len(clients)].query(fw.select_by_pk(1 + i % 100))
            latencies.append(time.monotonic() - started)
            bad += status != 200
            i += 1
    finally:
        for c in clients:
            c.close()
    return (_p95_ms(latencies) if latencies else None), bad


def _p95_ms(samples_s: list[float]) -> float:
    return round(fw.percentile([s * 1000 for s in samples_s], 95), 3)


class Watcher:
    """Asks every instance's /healthz every 0.2 s (1 s timeout): which ever failed to answer."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.stalled: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=1.0) as client:
            while not self._stop.wait(0.2):
                for url in self.urls:
                    try:
                        client.get(url + "/healthz").raise_for_status()
                    except httpx.HTTPError:
                        self.stalled.add(url)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------- attacks


class Attack:
    """One attack in a background thread until stopped; counts the status codes it got."""

    def __init__(self, body: Callable[[Attack], None]) -> None:
        self.codes: Counter[str] = Counter()
        self.stop = threading.Event()
        self._body = body
        self._threads: list[threading.Thread] = []
        self.parallel = 1

    def start(self, parallel: int = 1) -> Attack:
        self.parallel = parallel
        for _ in range(parallel):
            t = threading.Thread(target=self._guarded, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _guarded(self) -> None:
        try:
            self._body(self)
        except Exception as exc:  # an attack that breaks is recorded, not fatal
            self.codes[type(exc).__name__] += 1

    def paced(self) -> None:
        """The free plan's rate over all of the attack's threads (100/minute in all)."""
        self.stop.wait(60.0 / FREE_RATE_PER_MIN * self.parallel)

    def finish(self) -> dict[str, int]:
        self.stop.set()
        for t in self._threads:
            t.join(HANG_S)
        return dict(self.codes)


def _stream_attack(url: str, key: str, filters: list[dict[str, Any]]) -> Callable[[Attack], None]:
    params = {"table": "docs", "apikey": key, "since": "0-0", "filters": json.dumps(filters)}

    def body(a: Attack) -> None:
        with httpx.Client(timeout=httpx.Timeout(5.0, connect=5.0)) as client:
            while not a.stop.is_set():
                try:
                    with client.stream("GET", url + BASE + "/realtime", params=params) as r:
                        a.codes[str(r.status_code)] += 1
                        deadline = time.monotonic() + 2.0
                        for _ in r.iter_lines():
                            if a.stop.is_set() or time.monotonic() > deadline:
                                break
                except httpx.HTTPError as exc:
                    a.codes[type(exc).__name__] += 1
                a.paced()

    return body


def _request_attack(url: str, key: str, path: str, doc: dict[str, Any]) -> Callable[[Attack], None]:
    def body(a: Attack) -> None:
        client = fw.HttpClient(url, key, timeout=60.0)
        try:
            while not a.stop.is_set():
                status, _ = client.request("POST", BASE + path, doc)
                a.codes[str(status)] += 1
                a.paced()
        finally:
            client.close()

    return body


def _slow_write(bench: Bench, schema: str) -> Callable[[Attack], None]:
    insert = sql.SQL("INSERT INTO {} (body) VALUES ('slow')").format(sql.Identifier(schema, "docs"))

    def body(a: Attack) -> None:
        with psycopg.connect(bench.url) as conn:
            while not a.stop.is_set():
                conn.execute(insert)
                conn.execute("SELECT pg_sleep(%s)", [STATEMENT_TIMEOUT_MS / 1000 * 0.95])
                conn.commit()
                a.codes["committed"] += 1

    return body


def _realtime_delay(bench: Bench, url: str, victim: dict[str, Any], seconds: float) -> float | None:
    """p95 (ms) of the victim's commit → event at its stream, inserting every 0.2 s."""
    arrivals: dict[str, float] = {}
    opened = threading.Event()

    def listen() -> None:
        params = {"table": "items", "apikey": victim["public_key"]}
        with (
            httpx.Client(timeout=httpx.Timeout(seconds + 30, connect=5.0)) as client,
            client.stream("GET", url + BASE + "/realtime", params=params) as r,
        ):
            opened.set()
            for line in r.iter_lines():
                if line.startswith("data:") and '"bench-rt-' in line:
                    tag = line.split('"bench-rt-', 1)[1].split('"', 1)[0]
                    arrivals[tag] = time.monotonic()

    threading.Thread(target=listen, daemon=True).start()
    opened.wait(10)
    sent: dict[str, float] = {}
    table = sql.Identifier(victim["schema_name"], "items")
    with psycopg.connect(bench.url, autocommit=True) as conn:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            tag = str(i)
            conn.execute(
                sql.SQL("INSERT INTO {} (title) VALUES (%s)").format(table), [f"bench-rt-{tag}"]
            )
            sent[tag] = time.monotonic()
            i += 1
            time.sleep(0.2)
    deadline = time.monotonic() + STATEMENT_TIMEOUT_MS / 1000 + 5
    while time.monotonic() < deadline and len(arrivals) < len(sent):
        time.sleep(0.1)
    delays = [arrivals.get(t, deadline) - s for t, s in sent.items()]
    return _p95_ms(delays) if delays else None


class _Receiver:
    """Job endpoints: ``/hang`` sleeps ``HANG_S`` before answering; ``/fast`` records arrivals."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/hang":
                    time.sleep(HANG_S)
                else:
                    receiver.arrivals[str(json.loads(body).get("id"))] = arrived
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the job's own timeout ended the call first: what /hang is for

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _set_endpoint(bench: Bench, project: dict[str, Any], url: str) -> None:
    env = {**os.environ, "DATABASE_URL": bench.url, "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true"}
    subprocess.run(
        [sys.executable, "-m", "gateway", "jobs", "set-endpoint", project["name"], url, "--json"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _enqueue(url: str, key: str, body: dict[str, Any]) -> tuple[int, str | None]:
    r = httpx.post(url + "/v1/inhouse/jobs", json=body, headers={"x-api-key": key}, timeout=10)
    job = r.json().get("data", {}).get("job", {}) if r.status_code < 300 else {}
    return r.status_code, job.get("id")


def _slow_jobs(
    bench: Bench, urls: list[str], victim: dict[str, Any], size: Size
) -> tuple[dict[str, int], float | None, Callable[[], None]]:
    """Two attackers fill what they can with hanging jobs; the victim's job wait (ms)."""
    receiver = _Receiver()
    codes: Counter[str] = Counter()
    attackers = [bench.make_project(table=None) for _ in range(2)]
    for project in [*attackers, victim]:
        _set_endpoint(bench, project, receiver.url("/fast" if project is victim else "/hang"))
    for attacker in attackers:
        for i in range(40):
            status, _ = _enqueue(
                urls[i % len(urls)],
                attacker["server_key"],
                {"name": "hang", "payload": {"i": i}, "timeoutMs": 60_000},
            )
            codes[str(status)] += 1
    time.sleep(2.0)  # the attackers' jobs are claimed and hanging
    waits: list[float] = []
    for i in range(size.victim_jobs):
        started = time.monotonic()
        _, job_id = _enqueue(
            urls[i % len(urls)], victim["server_key"], {"name": "v", "payload": {}}
        )
        deadline = started + HANG_S + 5
        while job_id and job_id not in receiver.arrivals and time.monotonic() < deadline:
            time.sleep(0.01)
        waits.append(receiver.arrivals.get(job_id or "", deadline) - started)
    return dict(codes), (max(waits) * 1000 if waits else None), receiver.close


# ---------------------------------------------------------------- the run


def _seed(bench: Bench, attacker: dict[str, Any]) -> None:
    docs = sql.Identifier(attacker["schema_name"], "docs")
    with psycopg.connect(bench.url, autocommit=True) as conn:
        # like_regex: long rows of 'a' (the backtracking pattern never finds its 'b')
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (body) SELECT repeat('a', 5000) FROM generate_series(1, 20)"
            ).format(docs)
        )
        # jsonb_contains / query_contains: rows of 12,000 and one of 40,000 elements
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (meta) SELECT jsonb_agg(jsonb_build_object('k', i, 'v', 'x'))"
                " FROM generate_series(1, 12000) i, generate_series(1, 5) r GROUP BY r"
            ).format(docs)
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (meta) SELECT jsonb_agg(i) FROM generate_series(1, 40000) i"
            ).format(docs)
        )
        # big_batch: ~4 MB of text
        conn.execute(
            sql.SQL("INSERT INTO {} (body) SELECT repeat(md5(g::text), 32)"
                    " FROM generate_series(1, 4000) g").format(docs)
        )  # fmt: skip


def _attacker(bench: Bench) -> dict[str, Any]:
    """An attacker project of its own per attack (a fresh free-plan rate limit), seeded."""
    project = bench.make_project(table=ATTACK_TABLE, rate_limit_per_minute=FREE_RATE_PER_MIN)
    _seed(bench, project)
    return project


def run(bench: Bench) -> ScenarioResult:
    size = SIZES.current()
    victim = bench.make_project(table=VICTIM_TABLE, rows=100)
    attackers = {name: _attacker(bench) for name in ATTACKS if name != "slow_jobs"}
    cluster = bench.start_cluster(INSTANCES, name="iso", env=ENV)
    urls = cluster.urls

    def pk(name: str) -> str:
        return str(attackers[name]["public_key"])

    def sk(name: str) -> str:
        return str(attackers[name]["server_key"])

    wanted = [{"k": 12_000 - i} for i in range(50)]
    big_value = list(range(100_000, 100_000 + 12_000))  # ~90 KB of JSON
    attacks: dict[str, Callable[[], Attack]] = {
        "like_regex": lambda: Attack(
            _stream_attack(urls[0], pk("like_regex"),
                           [{"column": "body", "op": "like", "value": "%a%a%a%a%a%b"}])
        ).start(size.streams),
        "jsonb_contains": lambda: Attack(
            _stream_attack(urls[0], pk("jsonb_contains"),
                           [{"column": "meta", "op": "contains", "value": wanted}])
        ).start(size.streams),
        "query_contains": lambda: Attack(
            _request_attack(urls[0], sk("query_contains"), "/query", {"query": {
                "operation": "select", "table": "docs", "columns": ["id"],
                "filters": [{"column": "meta", "op": "contains", "value": big_value}],
            }})
        ).start(),
        "slow_write": lambda: Attack(
            _slow_write(bench, attackers["slow_write"]["schema_name"])
        ).start(),
        "big_batch": lambda: Attack(
            _request_attack(urls[0], sk("big_batch"), "/batch", {"queries": [
                {"operation": "select", "table": "docs", "limit": 1000, "offset": 1000 * (i % 4)}
                for i in range(20)
            ]})
        ).start(),
        "slow_queries": lambda: Attack(
            _request_attack(urls[0], sk("slow_queries"), "/query", {"query": {
                "operation": "select", "table": "docs", "columns": ["id"],
                "filters": [{"column": "body", "op": "like", "value": "%zz%q%"}], "limit": 1,
            }})
        ).start(8),
    }  # fmt: skip
    figures: dict[str, Any] = {}
    stalls = 0
    delay_ms: float | None = None
    victim_wait: float | None = None
    try:
        bench.settle()  # the seeding's autovacuum would skew the first calm phase
        _victim_p95(urls, victim["server_key"], min(1.0, size.seconds))  # warm
        for name in ATTACKS:
            # a calm phase right before each attack: the ratio compares neighbours in time
            calm, calm_bad = _victim_p95(urls, victim["server_key"], size.seconds)
            with Watcher(urls) as watcher:
                cleanup: Callable[[], None] | None = None
                if name == "slow_jobs":
                    codes, victim_wait, cleanup = _slow_jobs(bench, urls, victim, size)
                    p95, bad = _victim_p95(urls, victim["server_key"], size.seconds)
                else:
                    attack = attacks[name]()
                    time.sleep(min(1.0, size.seconds / 4))  # the attack is under way
                    p95, bad = _victim_p95(urls, victim["server_key"], size.seconds)
                    if name == "slow_write":
                        delay_ms = _realtime_delay(bench, urls[1], victim, size.seconds)
                    codes = attack.finish()
                if cleanup is not None:
                    cleanup()
            figures[name] = {
                "calm_p95_ms": calm,
                "calm_non200": calm_bad,
                "p95_ms": p95,
                "ratio": fw.ratio(p95, calm),
                "victim_non200": bad,
                "attacker_codes": codes,
                "stalled": sorted(watcher.stalled),
            }
            stalls += bool(watcher.stalled)
    finally:
        bench.stop_cluster(cluster)
    keys: dict[str, Any] = {
        **{f"isolation.{a}.victim_p95_ratio": figures[a]["ratio"] for a in ATTACKS},
        "isolation.realtime_delay_ms": delay_ms,
        "isolation.instance_stalls": stalls,
        "isolation.slow_jobs.victim_wait_ms": victim_wait,
    }
    rows = [
        [a, figures[a]["calm_p95_ms"], figures[a]["p95_ms"], figures[a]["ratio"],
         figures[a]["victim_non200"] + figures[a]["calm_non200"],
         json.dumps(figures[a]["attacker_codes"], sort_keys=True), len(figures[a]["stalled"])]
        for a in ATTACKS
    ]  # fmt: skip
    table = Table(
        [
            "attack",
            "victim p95 ms calm",
            "victim p95 ms attacked",
            "ratio",
            "victim non-200",
            "attacker answers",
            "stalls",
        ],
        rows,
    )
    targets = [
        *(
            fw.target(
                f"{a}: victim p95 <= 1.5 x calm",
                "<= 1.5",
                figures[a]["ratio"],
                figures[a]["ratio"] is not None and figures[a]["ratio"] <= 1.5,
            )
            for a in ATTACKS
        ),
        fw.target(
            "victim realtime delay during slow_write",
            "<= 1000 ms",
            delay_ms,
            delay_ms is not None and delay_ms <= 1000,
        ),
        fw.target("instances that stopped answering /healthz", "0", stalls, stalls == 0),
    ]
    notes = [
        f"{INSTANCES} instances, statement timeout {STATEMENT_TIMEOUT_MS} ms; victim selects "
        f"by primary key for {size.seconds:g} s per phase; attacker at {FREE_RATE_PER_MIN}"
        "/minute over all its threads. Attacker answers: status codes (a 4xx is a refusal: "
        "defended). slow_jobs victim wait: worst enqueue → arrival of "
        f"{size.victim_jobs} job(s)."
    ]
    return ScenarioResult(NAME, keys, [table], targets, {"figures": figures}, notes)
