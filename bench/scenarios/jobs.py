"""``jobs``: background jobs on PostgreSQL (ours) vs a Redis queue (arq), same machine, same run.

Both contenders deliver every job as an HTTP POST to the same no-op receiver (a minimal
asyncio HTTP/1.1 server in this process that records when each job arrived), with the
same concurrency (``CONCURRENCY`` deliveries at once):

- postgres: one ``gateway serve`` whose worker claims with ``gateway.claim_jobs`` and is
  woken by NOTIFY; jobs are enqueued with ``gateway.jobs.store.enqueue`` (what the
  enqueue route calls: ``gateway.enqueue_job``, quota and idempotency included) from
  ``ENQUEUERS`` connections. The project's monthly job-run limit is unlimited.
- redis: an ``arq`` worker process (``max_jobs = CONCURRENCY``, ``poll_delay`` 5 ms —
  arq polls Redis instead of blocking, and its 0.5 s default would make it look slow)
  whose job function POSTs with httpx; jobs are enqueued with ``ArqRedis.enqueue_job``
  from ``ENQUEUERS`` tasks. ``redis-server`` runs without persistence.

Throughput (``jobs_per_s``): N jobs enqueued as fast as the enqueuers go; jobs/s from the
first enqueue to the last arrival. Latency (``p50_ms``, ``p99_ms``): on an idle system,
one job at a time, from just before the enqueue call to its arrival at the receiver.
Targets: postgres throughput ≥ 0.5 × redis, p50 ≤ 2 × redis, p50 ≤ 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from bench import framework as fw
from bench.framework import Bench, ScenarioResult, Skip
from bench.report import Table
from gateway.jobs import store
from gateway.jobs.rules import EnqueueRequest

NAME = "jobs"
KEYS = [f"jobs.{c}.{k}" for c in ("postgres", "redis") for k in ("jobs_per_s", "p50_ms", "p99_ms")]
CONCURRENCY = 16
ENQUEUERS = 4
SEQ_RE = re.compile(rb'"seq":(\d+)')


@dataclass(frozen=True)
class Size:
    jobs: int  # per throughput run (BENCH_JOBS_N overrides)
    latency_samples: int  # one-at-a-time jobs per contender, over its runs
    # the contenders' runs, in order: A B B A, so a drifting machine load favours neither
    order: tuple[str, ...]
    settle_s: float  # after a worker starts, and before the idle latency runs


ABBA = ("postgres", "redis", "redis", "postgres")
SIZES = fw.Sizes(
    full=Size(jobs=3000, latency_samples=200, order=ABBA, settle_s=1.0),
    quick=Size(jobs=800, latency_samples=60, order=ABBA, settle_s=1.0),
    smoke=Size(jobs=40, latency_samples=4, order=("postgres", "redis"), settle_s=0.2),
)


def _enqueue_request(seq: int) -> EnqueueRequest:
    """A job as the enqueue route builds it: due now, 10 s timeout, 3 attempts."""
    return EnqueueRequest(
        name="bench",
        payload={"seq": seq},
        run_at=None,
        delay_ms=0,
        timeout_ms=10_000,
        max_attempts=3,
        concurrency_key=None,
        idempotency_key=None,
    )


class NoopReceiver:
    """HTTP/1.1 keep-alive, answers 200 ``ok`` to every POST and notes its arrival time."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.loop = asyncio.new_event_loop()
        self.port = fw.free_port()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.server: asyncio.AbstractServer | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip())
                body = await reader.readexactly(length) if length else b""
                match = SEQ_RE.search(body)
                if match:
                    self.arrivals.setdefault(int(match.group(1)), time.monotonic())
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def start(self) -> NoopReceiver:
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        def close() -> None:
            if self.server is not None:
                self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(close)
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def reset(self) -> None:
        self.arrivals = {}


async def _wait_arrivals(receiver: NoopReceiver, seqs: range, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    last = seqs[-1] if seqs else None
    while time.monotonic() < deadline:
        if all(s in receiver.arrivals for s in seqs):
            return max(receiver.arrivals[s] for s in seqs) if last is not None else None
        await asyncio.sleep(0.01)
    return None


def _figures(
    receiver: NoopReceiver, n: int, start: float, end: float | None, lat: list[float]
) -> dict[str, Any]:
    got = sum(1 for s in range(n) if s in receiver.arrivals)
    summary = fw.summarize_ms(lat) if lat else {"p50_ms": None, "p99_ms": None}
    return {
        "jobs_per_s": round(n / (end - start), 1) if end else None,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "delivered": got,
        "of": n,
        "latencies_s": lat,
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Two runs of one contender (A B B A order): mean rate, percentiles over all samples."""
    if len(runs) == 1:
        merged = dict(runs[0])
    else:
        rates = [r["jobs_per_s"] for r in runs if r.get("jobs_per_s")]
        lat = [x for r in runs for x in r["latencies_s"]]
        summary = fw.summarize_ms(lat) if lat else {"p50_ms": None, "p99_ms": None}
        merged = {
            "jobs_per_s": round(sum(rates) / len(rates), 1) if rates else None,
            "jobs_per_s_runs": [r.get("jobs_per_s") for r in runs],
            "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"],
            "delivered": sum(r["delivered"] for r in runs),
            "of": sum(r["of"] for r in runs),
            "enqueue_per_s": [r.get("enqueue_per_s") for r in runs],
            "latencies_s": lat,
            "enqueue_latencies_s": [x for r in runs for x in r.get("enqueue_latencies_s", [])],
            "top_statements": next(
                (r["top_statements"] for r in runs if r.get("top_statements")), None
            ),
        }
    merged.pop("latencies_s", None)
    commits = merged.pop("enqueue_latencies_s", None)
    if commits:
        merged["enqueue_commit_p50_ms"] = fw.summarize_ms(commits)["p50_ms"]
    return merged


# ---------------------------------------------------------------- postgres


async def _pg_run(
    bench: Bench, project_id: str, receiver: NoopReceiver, n: int, samples: int, settle_s: float
) -> dict[str, Any]:
    conns = [
        await psycopg.AsyncConnection.connect(bench.url, autocommit=True) for _ in range(ENQUEUERS)
    ]
    try:
        # throughput
        receiver.reset()
        start = time.monotonic()

        async def enqueuer(conn: psycopg.AsyncConnection[Any], part: range) -> None:
            for seq in part:
                await store.enqueue(conn, project_id, _enqueue_request(seq))

        await asyncio.gather(*(enqueuer(c, range(i, n, ENQUEUERS)) for i, c in enumerate(conns)))
        enqueued = time.monotonic()
        end = await _wait_arrivals(receiver, range(n), 120)
        # latency: idle, one at a time
        await asyncio.sleep(settle_s)
        lat: list[float] = []
        committed: list[float] = []  # the enqueue statement alone (commit = WAL flush)
        base = 10_000_000
        for i in range(samples):
            seq = base + i
            t0 = time.monotonic()
            await store.enqueue(conns[0], project_id, _enqueue_request(seq))
            committed.append(time.monotonic() - t0)
            got = await _wait_arrivals(receiver, range(seq, seq + 1), 10)
            if got is not None:
                lat.append(receiver.arrivals[seq] - t0)
            await asyncio.sleep(0.02)
        figures = _figures(receiver, n, start, end, lat)
        figures["enqueue_per_s"] = round(n / (enqueued - start), 1)
        figures["enqueue_latencies_s"] = committed
        return figures
    finally:
        for c in conns:
            await c.close()


def run_postgres(
    bench: Bench, receiver: NoopReceiver, n: int, samples: int, settle_s: float
) -> dict[str, Any]:
    project = bench.make_project(table=None, public_key=False)
    with bench.connect() as conn:
        conn.execute(  # -1: unlimited, whatever the plan allows
            "UPDATE gateway.projects SET job_runs_limit_monthly = -1 WHERE id = %s",
            [project["id"]],
        )
        conn.execute(
            "INSERT INTO gateway.job_projects (project_id, endpoint_url, signing_secret) "
            "VALUES (%s, %s, 'whsec_bench')",
            [project["id"], receiver.url],
        )
    cluster = bench.start_cluster(
        1,
        env={
            "GATEWAY_JOBS_CONCURRENCY": str(CONCURRENCY),
            "GATEWAY_JOBS_PER_PROJECT": str(CONCURRENCY),
            "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true",
        },
        name="jobs",
    )
    try:
        time.sleep(settle_s)
        bench.reset_stat_statements()
        figures = asyncio.run(_pg_run(bench, project["id"], receiver, n, samples, settle_s))
        figures["top_statements"] = bench.top_statements(5)
        return figures
    finally:
        bench.stop_cluster(cluster)


# ---------------------------------------------------------------- redis (arq)


async def _arq_run(
    port: int, receiver: NoopReceiver, n: int, samples: int, settle_s: float
) -> dict[str, Any]:
    from arq import create_pool
    from arq.connections import RedisSettings

    redis = await create_pool(RedisSettings(host="127.0.0.1", port=port))
    try:
        receiver.reset()
        start = time.monotonic()

        async def enqueuer(part: range) -> None:
            for seq in part:
                await redis.enqueue_job("deliver", receiver.url, seq)

        await asyncio.gather(*(enqueuer(range(i, n, ENQUEUERS)) for i in range(ENQUEUERS)))
        enqueued = time.monotonic()
        end = await _wait_arrivals(receiver, range(n), 120)
        await asyncio.sleep(settle_s)
        lat: list[float] = []
        base = 10_000_000
        for i in range(samples):
            seq = base + i
            t0 = time.monotonic()
            await redis.enqueue_job("deliver", receiver.url, seq)
            got = await _wait_arrivals(receiver, range(seq, seq + 1), 10)
            if got is not None:
                lat.append(receiver.arrivals[seq] - t0)
            await asyncio.sleep(0.02)
        figures = _figures(receiver, n, start, end, lat)
        figures["enqueue_per_s"] = round(n / (enqueued - start), 1)
        return figures
    finally:
        await redis.aclose()


def run_redis(
    bench: Bench, receiver: NoopReceiver, n: int, samples: int, settle_s: float
) -> dict[str, Any]:
    fw.require_binary("redis-server", "redis-server")
    try:
        import arq  # noqa: F401
    except ImportError:
        raise Skip("arq is not installed: pip install -e '.[bench]'") from None
    port = fw.free_port()
    redis = bench.processes.start(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        log=bench.logs / "jobs-redis.log",
    )
    worker = None
    try:
        _wait_port(port)
        env = {
            **os.environ,
            "BENCH_REDIS_PORT": str(port),
            "BENCH_ARQ_MAX_JOBS": str(CONCURRENCY),
            "PYTHONPATH": str(fw.REPO_ROOT),
        }
        worker = bench.processes.start(
            [sys.executable, "-m", "bench.jobs_arq_worker"],
            env=env,
            log=bench.logs / "jobs-arq-worker.log",
        )
        time.sleep(settle_s * 1.5)  # the worker's import and its first poll
        return asyncio.run(_arq_run(port, receiver, n, samples, settle_s))
    finally:
        if worker is not None:
            bench.processes.stop(worker)
        bench.processes.stop(redis)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not listen on {port}")


# ---------------------------------------------------------------- the scenario


def run(bench: Bench) -> ScenarioResult:
    size = SIZES.current()
    n = int(os.environ.get("BENCH_JOBS_N") or size.jobs)
    samples = size.latency_samples
    receiver = NoopReceiver().start()
    notes = [
        f"{n} jobs for throughput, {samples} one-at-a-time jobs for latency per contender; "
        f"{CONCURRENCY} deliveries at once, {ENQUEUERS} enqueuers; the same no-op receiver",
        "postgres: 1 gateway instance's worker (claim_jobs + NOTIFY wake-up), enqueue via "
        "gateway.jobs.store.enqueue; redis: 1 arq worker (poll_delay 5 ms), enqueue via arq",
    ]
    runs: dict[str, list[dict[str, Any]]] = {"postgres": [], "redis": []}
    redis_skipped: str | None = None
    per_run = max(1, samples // size.order.count("postgres"))
    try:
        for contender in size.order:
            if contender == "postgres":
                runs["postgres"].append(run_postgres(bench, receiver, n, per_run, size.settle_s))
            elif not redis_skipped:
                try:
                    runs["redis"].append(run_redis(bench, receiver, n, per_run, size.settle_s))
                except Skip as exc:
                    redis_skipped = str(exc)
                    notes.append(f"redis contender skipped: {exc}")
    finally:
        receiver.stop()
    figures = {name: _merge(r) for name, r in runs.items() if r}
    commit_p50 = figures.get("postgres", {}).get("enqueue_commit_p50_ms")
    if commit_p50 is not None:
        notes.append(
            f"postgres latency includes the enqueue's durable commit (WAL flush): p50 "
            f"{commit_p50} ms of it; redis-server runs without persistence"
        )
    if size.order == ABBA:
        notes.append(
            "each contender ran twice (postgres, redis, redis, postgres): jobs/s is the "
            "mean of its two runs, percentiles are over both runs' samples"
        )
    keys: dict[str, Any] = {}
    for contender in ("postgres", "redis"):
        f = figures.get(contender, {})
        for k in ("jobs_per_s", "p50_ms", "p99_ms"):
            keys[f"jobs.{contender}.{k}"] = f.get(k)
    pg, rd = figures.get("postgres", {}), figures.get("redis", {})
    rows = [
        [
            name,
            f.get("jobs_per_s"),
            f.get("p50_ms"),
            f.get("p99_ms"),
            f"{f.get('delivered')} of {f.get('of')}",
            fw.ratio(f.get("jobs_per_s"), rd.get("jobs_per_s")),
            fw.ratio(f.get("p50_ms"), rd.get("p50_ms")),
        ]
        for name, f in (("PostgreSQL (ours)", pg), ("Redis (arq)", rd))
        if f
    ]
    table = Table(
        ["contender", "jobs/s", "p50 ms", "p99 ms", "delivered", "rate ÷ Redis", "p50 ÷ Redis"],
        rows,
    )
    rate_ratio = fw.ratio(pg.get("jobs_per_s"), rd.get("jobs_per_s"))
    p50_ratio = fw.ratio(pg.get("p50_ms"), rd.get("p50_ms"))
    targets = [
        fw.target("jobs throughput vs Redis", "≥ 0.5×", rate_ratio, (rate_ratio or 0) >= 0.5),
        fw.target("jobs p50 vs Redis", "≤ 2×", p50_ratio, (p50_ratio or 99) <= 2.0),
        fw.target("jobs p50 (idle)", "≤ 50 ms", pg.get("p50_ms"), (pg.get("p50_ms") or 99) <= 50),
    ]
    return ScenarioResult(
        NAME,
        keys,
        tables=[table],
        targets=targets,
        details={"figures": figures},
        notes=notes,
        unmeasured=fw.unmeasured(keys, "redis", redis_skipped) if redis_skipped else {},
    )
