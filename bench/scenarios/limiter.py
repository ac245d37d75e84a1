"""``limiter``: one rate-limit decision — our PostgreSQL admission vs Redis vs a dict.

Part 1, speed: one Python process, 16 concurrent asyncio tasks, each contender for the
same time; every decision is timed on the client (``perf_counter`` around the await).
All three decide for ONE project (a single hot counter), the worst case for a shared
store.

- postgres: the gateway's own admission as a request runs it (``Pipeline.admit`` after
  the local deny) through the gateway's own pool (``gateway.db.pool.create_pool``:
  autocommit, prepared statements).
- redis: ``INCR`` + ``EXPIRE`` in one Lua script (``EVALSHA``) through redis-py's asyncio
  client against a local ``redis-server`` (no persistence), the usual Redis limiter.
- memory: the original's per-process map ``{(project, window): count}``.

Part 2, exactness: 3 processes x 200 decisions against a limit of 100 in one window;
the admitted total for each contender (a dict admits ~300: every process has its own).

Coalesced admission: "postgres" is the gateway as shipped (every admission waiting at
one moment in one statement, ``GATEWAY_ADMISSION_COALESCE`` on); "postgres_uncoalesced"
the same with one statement per decision, in the same run. One task alone (no one to
coalesce with) is measured both ways in alternating rounds: a lone request must not pay
for the coalescing.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
import uuid
from array import array
from dataclasses import dataclass
from typing import Any

from bench import framework as fw
from bench.framework import Bench, ScenarioResult, Skip
from bench.report import Table
from gateway.db.pool import create_pool
from gateway.errors import GatewayError
from gateway.query.pipeline import Pipeline
from gateway.settings import Settings

NAME = "limiter"
KEYS = [
    f"limiter.{c}.{k}"
    for c in ("postgres", "redis", "memory")
    for k in ("ops_per_s", "p50_ms", "p99_ms", "admitted_of_100")
] + [
    "limiter.postgres_vs_redis_p50_ratio",
    "limiter.postgres_uncoalesced.ops_per_s",
    "limiter.postgres_uncoalesced.p50_ms",
    "limiter.postgres_uncoalesced.p99_ms",
    "limiter.postgres_uncoalesced_vs_redis_p50_ratio",
    "limiter.postgres.one_task_p50_ms",
    "limiter.postgres.one_task_p50_ms_uncoalesced",
    "limiter.postgres.one_task_coalesced_vs_uncoalesced_ratio",
]

TASKS = 16
EXACT_PROCESSES = 3
EXACT_REQUESTS = 200
EXACT_LIMIT = 100
WINDOW_S = 60


@dataclass(frozen=True)
class Size:
    seconds: float  # per contender, 16 tasks (one task alone: the same, in 8 rounds)
    # exactness starts with at least this long left in the rate window (0: at once — a
    # smoke run may straddle a window boundary and admit 200; it asserts no figure)
    fresh_window_s: float


SIZES = fw.Sizes(
    full=Size(seconds=10.0, fresh_window_s=15.0),
    quick=Size(seconds=2.0, fresh_window_s=15.0),
    smoke=Size(seconds=0.4, fresh_window_s=0.0),
)

REDIS_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""

LOCAL_DENY_CODES = {"RATE_LIMIT_EXCEEDED", "REQUEST_QUOTA_EXCEEDED"}


# ---------------------------------------------------------------- contenders


class Contender:
    name = ""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def decide(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class MemoryContender(Contender):
    """The original: a per-process dict, fixed 60 s windows."""

    name = "memory"

    def __init__(self, limit: int, project: str = "p") -> None:
        self.limit = limit
        self.project = project
        self.counts: dict[tuple[str, int], int] = {}

    async def decide(self) -> bool:
        key = (self.project, int(time.time()) // WINDOW_S)
        count = self.counts.get(key, 0) + 1
        self.counts[key] = count
        return count <= self.limit


class RedisContender(Contender):
    name = "redis"

    def __init__(self, port: int, limit: int, project: str) -> None:
        self.port = port
        self.limit = limit
        self.project = project
        self.client: Any = None
        self.script: Any = None

    async def open(self) -> None:
        import redis.asyncio as redis_asyncio

        self.client = redis_asyncio.Redis(host="127.0.0.1", port=self.port, max_connections=TASKS)
        self.script = self.client.register_script(REDIS_SCRIPT)
        await self.client.ping()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def decide(self) -> bool:
        window = int(time.time()) // WINDOW_S
        count = await self.script(keys=[f"rl:{self.project}:{window}"], args=[WINDOW_S * 2])
        return int(count) <= self.limit


def _settings(url: str, coalesce: bool = True) -> Settings:
    """The gateway's settings, with as many pool connections as tasks (the Redis client
    gets as many): with the default 10, six tasks would always queue for a connection and
    the figure would measure the pool's size, not the decision."""
    return Settings.from_env(
        {
            "DATABASE_URL": url,
            "GATEWAY_INSTANCE_ID": "bench",
            "GATEWAY_POOL_MAX": str(TASKS),
            "GATEWAY_POOL_MIN": str(TASKS),
            "GATEWAY_ADMISSION_COALESCE": "1" if coalesce else "0",
            # the coalescer's statements in flight, as the bench's environment says
            "GATEWAY_ADMISSION_STATEMENTS_MAX": os.environ.get(
                "GATEWAY_ADMISSION_STATEMENTS_MAX", "1"
            ),
        }
    )


class PostgresFloor(Contender):
    """Not a contender: pool checkout + ``SELECT 1`` on the gateway's pool, the least any
    PostgreSQL decision can cost from this client (shows how much is the statement)."""

    name = "postgres_floor"

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool: Any = None

    async def open(self) -> None:
        settings = _settings(self.url)
        self.pool = create_pool(settings)
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    async def decide(self) -> bool:
        async with self.pool.connection() as conn:
            await (await conn.execute("SELECT 1", prepare=True)).fetchone()
        return True


class PostgresContender(Contender):
    """The gateway's own admission, called exactly as a request calls it: the local deny
    (``Pipeline.admitter.check_local``), then ``Pipeline.admit`` on a connection of the
    gateway's own pool; a refusal is a ``GatewayError`` (429 over the limit). No fallback:
    if that entry point changes, this scenario fails (and the smoke run with it) instead
    of quietly measuring something else."""

    name = "postgres"
    how = (
        "Pipeline(settings, pool).admitter.check_local(key), then "
        "pool.connection() -> Pipeline.admit(conn, key, 1)"
    )

    def __init__(self, url: str, key: str, coalesce: bool = True) -> None:
        self.url = url
        self.key = key
        self.coalesce = coalesce
        self.pool: Any = None
        self.pipeline: Pipeline | None = None

    async def open(self) -> None:
        settings = _settings(self.url, self.coalesce)
        self.pool = create_pool(settings)
        await self.pool.open(wait=True, timeout=30)
        self.pipeline = Pipeline(settings, self.pool)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def decide(self) -> bool:
        assert self.pipeline is not None
        try:
            hashed = self.pipeline.admitter.check_local(self.key)
            async with self.pool.connection() as conn:
                await self.pipeline.admit(conn, self.key, 1, key_hash=hashed)
        except GatewayError as error:
            if error.code in LOCAL_DENY_CODES:
                return False
            raise
        return True


# ---------------------------------------------------------------- speed


async def _measure(
    contender: Contender, seconds: float, tasks: int = TASKS, keep_samples: bool = False
) -> dict[str, Any]:
    await contender.open()
    try:
        # warm up: connections, prepared statements, script cache
        warm_until = time.perf_counter() + min(1.0, seconds / 5)
        while time.perf_counter() < warm_until:
            await asyncio.gather(*(contender.decide() for _ in range(tasks)))
        samples: list[array[float]] = [array("d") for _ in range(tasks)]
        yields = isinstance(contender, MemoryContender)
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(out: array[float]) -> None:
            clock = time.perf_counter
            decide = contender.decide
            while clock() < deadline:
                t0 = clock()
                await decide()
                out.append(clock() - t0)
                if yields:  # a dict never awaits: let the other tasks run
                    await asyncio.sleep(0)

        await asyncio.gather(*(worker(s) for s in samples))
        elapsed = time.perf_counter() - start
    finally:
        await contender.close()
    merged = [x for s in samples for x in s]
    stats = fw.summarize_ms(merged)
    return {
        "ops_per_s": round(len(merged) / elapsed, 1),
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
        "n": len(merged),
        **({"samples": merged} if keep_samples else {}),
    }


def _admission_cost(bench: Bench) -> dict[str, Any]:
    """PostgreSQL's own execution time per DECISION since the last reset: the admission
    statements' total time ÷ the rows they returned (one row per decision), and the mean
    number of decisions per statement (the batch size)."""
    with bench.connect() as conn:
        row = conn.execute(
            """
            SELECT coalesce(sum(calls), 0)::bigint AS statements,
                   coalesce(sum(rows), 0)::bigint AS decisions,
                   coalesce(sum(total_exec_time), 0)::float8 AS total_ms
              FROM pg_stat_statements
             WHERE query ILIKE '%%gateway.admit%%' AND query NOT ILIKE '%%pg_stat%%'
            """
        ).fetchone()
    statements, decisions, total_ms = row["statements"], row["decisions"], row["total_ms"]
    return {
        "statements": statements,
        "decisions": decisions,
        "decisions_per_statement": round(decisions / statements, 2) if statements else None,
        "server_ms_per_decision": round(total_ms / decisions, 4) if decisions else None,
    }


def _one_task(url: str, key: str, seconds: float) -> dict[bool, dict[str, Any]]:
    """One task alone, coalescing on and off, in 8 alternating rounds (on, off, off, on,
    ...) so that drifting machine load hits both alike (4 rounds swung the ratio between
    0.82 and 1.23 on a loaded machine)."""
    samples: dict[bool, list[float]] = {True: [], False: []}
    for coalesce in (True, False, False, True) * 2:
        m = asyncio.run(_measure(PostgresContender(url, key, coalesce), seconds / 4, 1, True))
        samples[coalesce].extend(m["samples"])
    return {c: {**fw.summarize_ms(v), "n": len(v)} for c, v in samples.items()}


# ---------------------------------------------------------------- exactness


def _exact_worker(kind: str, params: dict[str, Any], barrier: Any, out: Any) -> None:
    async def run() -> int:
        if kind == "memory":
            contender: Contender = MemoryContender(EXACT_LIMIT, params["project"])
        elif kind == "redis":
            contender = RedisContender(params["port"], EXACT_LIMIT, params["project"])
        else:
            contender = PostgresContender(params["url"], params["key"])
        await contender.open()
        try:
            barrier.wait(30)
            sem = asyncio.Semaphore(TASKS)

            async def one() -> bool:
                async with sem:
                    return await contender.decide()

            results = await asyncio.gather(*(one() for _ in range(EXACT_REQUESTS)))
        finally:
            await contender.close()
        return sum(1 for r in results if r)

    out.put((os.getpid(), asyncio.run(run())))


def _exactness(kind: str, params: dict[str, Any]) -> int:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(EXACT_PROCESSES)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_exact_worker, args=(kind, params, barrier, out), daemon=True)
        for _ in range(EXACT_PROCESSES)
    ]
    for p in procs:
        p.start()
    admitted = [out.get(timeout=90)[1] for _ in procs]
    for p in procs:
        p.join(10)
    return sum(admitted)


def _wait_for_fresh_window(bench: Bench, needed_s: float) -> None:
    """Don't straddle a window boundary by accident: the windows come from the DB clock."""
    if needed_s <= 0:
        return
    into = float(bench.scalar("SELECT extract(epoch FROM clock_timestamp())::float8")) % WINDOW_S
    if WINDOW_S - into < needed_s:
        time.sleep(WINDOW_S - into + 0.3)


# ---------------------------------------------------------------- the scenario


def run(bench: Bench) -> ScenarioResult:
    size = SIZES.current()
    seconds = size.seconds
    notes: list[str] = []
    details: dict[str, Any] = {}
    speed: dict[str, dict[str, Any]] = {}
    exact: dict[str, int | None] = {"postgres": None, "redis": None, "memory": None}

    redis_child = None
    redis_port = None
    redis_missing = None
    try:
        fw.require_binary("redis-server", "redis-server")
        redis_port = fw.free_port()
        redis_child = bench.processes.start(
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            log=bench.logs / "redis.log",
        )
        _wait_redis(redis_port)
    except Skip as exc:
        redis_missing = str(exc)
        notes.append(f"redis contender skipped: {exc}")

    try:
        hot = bench.make_project(table=None)
        # speed: one hot project each
        speed["memory"] = asyncio.run(_measure(MemoryContender(fw.UNREACHABLE_LIMIT), seconds))
        if redis_port and not redis_missing:
            speed["redis"] = asyncio.run(
                _measure(RedisContender(redis_port, fw.UNREACHABLE_LIMIT, hot["id"]), seconds)
            )
        bench.reset_stat_statements()
        speed["postgres"] = asyncio.run(
            _measure(PostgresContender(bench.url, hot["server_key"]), seconds)
        )
        details["postgres_how"] = PostgresContender.how
        notes.append(f"postgres contender: {PostgresContender.how}")
        details["postgres_top_statements"] = top = bench.top_statements(4)
        if top:
            notes.append(
                f"PostgreSQL's own execution time for the top statement: {top[0]['mean_ms']} "
                f"ms mean ({top[0]['query'][:60]}...); the rest of the p50 is client, "
                "pool and network"
            )
        details["postgres_statement_cost"] = _admission_cost(bench)
        bench.reset_stat_statements()
        speed["postgres_uncoalesced"] = asyncio.run(
            _measure(PostgresContender(bench.url, hot["server_key"], coalesce=False), seconds)
        )
        details["postgres_uncoalesced_statement_cost"] = _admission_cost(bench)
        one_task = _one_task(bench.url, hot["server_key"], seconds)
        details["one_task"] = {("on" if c else "off"): v for c, v in one_task.items()}
        speed["postgres_floor"] = asyncio.run(_measure(PostgresFloor(bench.url), seconds))

        # exactness: a fresh project / key per contender, limit 100 per window
        _wait_for_fresh_window(bench, size.fresh_window_s)
        exact["memory"] = _exactness("memory", {"project": uuid.uuid4().hex})
        if redis_port and not redis_missing:
            exact["redis"] = _exactness("redis", {"port": redis_port, "project": uuid.uuid4().hex})
        limited = bench.make_project(table=None, rate_limit_per_minute=EXACT_LIMIT)
        exact["postgres"] = _exactness("postgres", {"url": bench.url, "key": limited["server_key"]})
    finally:
        if redis_child is not None:
            bench.processes.stop(redis_child)

    keys: dict[str, Any] = {}
    for c in ("postgres", "redis", "memory"):
        s = speed.get(c, {})
        keys[f"limiter.{c}.ops_per_s"] = s.get("ops_per_s")
        keys[f"limiter.{c}.p50_ms"] = s.get("p50_ms")
        keys[f"limiter.{c}.p99_ms"] = s.get("p99_ms")
        keys[f"limiter.{c}.admitted_of_100"] = exact[c]
    pg_vs_redis = fw.ratio(keys["limiter.postgres.p50_ms"], keys["limiter.redis.p50_ms"])
    keys["limiter.postgres_vs_redis_p50_ratio"] = pg_vs_redis
    unco = speed.get("postgres_uncoalesced", {})
    keys["limiter.postgres_uncoalesced.ops_per_s"] = unco.get("ops_per_s")
    keys["limiter.postgres_uncoalesced.p50_ms"] = unco.get("p50_ms")
    keys["limiter.postgres_uncoalesced.p99_ms"] = unco.get("p99_ms")
    keys["limiter.postgres_uncoalesced_vs_redis_p50_ratio"] = fw.ratio(
        unco.get("p50_ms"), keys["limiter.redis.p50_ms"]
    )
    one = details.get("one_task", {})
    keys["limiter.postgres.one_task_p50_ms"] = one.get("on", {}).get("p50_ms")
    keys["limiter.postgres.one_task_p50_ms_uncoalesced"] = one.get("off", {}).get("p50_ms")
    one_ratio = fw.ratio(
        keys["limiter.postgres.one_task_p50_ms"],
        keys["limiter.postgres.one_task_p50_ms_uncoalesced"],
    )
    keys["limiter.postgres.one_task_coalesced_vs_uncoalesced_ratio"] = one_ratio

    rows = []
    for c, label in (
        ("postgres", "PostgreSQL (our admission)"),
        ("redis", "Redis INCR+EXPIRE"),
        ("memory", "in-process dict (original)"),
    ):
        p50 = keys[f"limiter.{c}.p50_ms"]
        rows.append(
            [
                label,
                keys[f"limiter.{c}.ops_per_s"],
                p50,
                keys[f"limiter.{c}.p99_ms"],
                fw.ratio(p50, keys["limiter.redis.p50_ms"]),
                fw.ratio(keys[f"limiter.{c}.ops_per_s"], keys["limiter.redis.ops_per_s"]),
                f"{exact[c]} of {EXACT_PROCESSES * EXACT_REQUESTS}"
                if exact[c] is not None
                else None,
            ]
        )
    if unco:
        rows.insert(
            1,
            [
                "PostgreSQL, one statement per decision (coalescing off)",
                unco["ops_per_s"],
                unco["p50_ms"],
                unco["p99_ms"],
                keys["limiter.postgres_uncoalesced_vs_redis_p50_ratio"],
                fw.ratio(unco["ops_per_s"], keys["limiter.redis.ops_per_s"]),
                None,
            ],
        )
    floor = speed.get("postgres_floor")
    if floor:
        rows.append(
            [
                "(floor: gateway pool checkout + SELECT 1)",
                floor["ops_per_s"],
                floor["p50_ms"],
                floor["p99_ms"],
                fw.ratio(floor["p50_ms"], keys["limiter.redis.p50_ms"]),
                fw.ratio(floor["ops_per_s"], keys["limiter.redis.ops_per_s"]),
                None,
            ]
        )
        details["postgres_floor"] = floor
    table = Table(
        [
            "contender",
            "decisions/s",
            "p50 ms",
            "p99 ms",
            "p50 ÷ Redis",
            "rate ÷ Redis",
            f"admitted (limit {EXACT_LIMIT})",
        ],
        rows,
    )
    tables = [table]
    cost_on = details.get("postgres_statement_cost")
    cost_off = details.get("postgres_uncoalesced_statement_cost")
    if cost_on and cost_off:
        tables.append(
            Table(
                [
                    "PostgreSQL, 16 tasks",
                    "statements",
                    "decisions",
                    "decisions per statement",
                    "server ms per decision",
                ],
                [
                    [
                        label,
                        c["statements"],
                        c["decisions"],
                        c["decisions_per_statement"],
                        c["server_ms_per_decision"],
                    ]
                    for label, c in (("coalescing on", cost_on), ("coalescing off", cost_off))
                ],
            )
        )
    if one:
        tables.append(
            Table(
                ["one task alone", "p50 ms", "p99 ms", "decisions"],
                [
                    [f"coalescing {v}", one[v]["p50_ms"], one[v]["p99_ms"], one[v]["n"]]
                    for v in ("on", "off")
                    if v in one
                ]
                + [["on ÷ off", one_ratio, None, None]],
            )
        )
    targets = [
        fw.target(
            "limiter: PostgreSQL p50 ≤ 1.0 x Redis p50 (16 tasks, one hot project)",
            "≤ 1.0",
            pg_vs_redis,
            pg_vs_redis is not None and pg_vs_redis <= 1.0,
        ),
        fw.target(
            "limiter: one task alone, p50 with coalescing within 10% of without",
            "≤ 1.1",
            one_ratio,
            one_ratio is not None and one_ratio <= 1.1,
        ),
        fw.target(
            "limiter: PostgreSQL exact across 3 processes",
            "= 100",
            exact["postgres"],
            exact["postgres"] == EXACT_LIMIT,
        ),
    ]
    notes.insert(
        0,
        f"PostgreSQL pool and Redis client: {TASKS} connections each (= tasks), the gateway's "
        "own pool code and statement settings otherwise.",
    )
    notes.insert(
        0,
        f"{TASKS} tasks x {seconds:g} s per contender, one hot project; "
        f"exactness: {EXACT_PROCESSES} processes x {EXACT_REQUESTS} decisions, "
        f"limit {EXACT_LIMIT}.",
    )
    result = ScenarioResult(NAME, keys, tables, targets, details, notes)
    if redis_missing:
        result.unmeasured = fw.unmeasured(keys, "redis", redis_missing)
    return result


def _wait_redis(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise Skip(f"redis-server did not start on port {port}")
