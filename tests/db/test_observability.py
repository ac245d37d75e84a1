"""Request log, maintenance leader, metrics, readiness and ``gateway stats`` on a real
PostgreSQL (no mocks; outages are caused by stopping the test server)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import itertools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.db.pool import create_pool
from gateway.ops.maintenance import (
    ConnectionSampler,
    Maintenance,
    delete_expired_request_log,
    install_default_jobs,
)
from gateway.ops.metrics import Metrics
from gateway.ops.request_log import LogRecord, RequestLog, client_ip
from gateway.settings import Settings
from tests.support.cli import run_cli
from tests.support.harness import LocalServerControl
from tests.support.observability import FAMILIES
from tests.support.polling import eventually, wait_until_async
from tests.support.scratchdb import scratch_database

T = Any


def settings_for(pg_url: str, **changes: Any) -> Settings:
    return Settings(database_url=pg_url, instance_id=f"t-{uuid.uuid4().hex[:10]}", **changes)


async def open_pool(settings: Settings, max_size: int = 4) -> AsyncConnectionPool:
    pool = create_pool(settings, max_size=max_size)
    await pool.open(wait=True, timeout=30)
    return pool


def record(i: int, **changes: Any) -> LogRecord:
    fields: dict[str, Any] = {
        "method": "SELECT",
        "path": "/db/todos",
        "table_name": "todos",
        "status_code": 200,
        "duration_ms": 1.0 + i % 7,
        "request_id": f"r{i}",
        "project_id": None,
        "response_size_bytes": 100 + i,
        "row_count": i % 3,
        "client_ip": "10.0.0.1",
        "user_agent": "pytest",
    }
    fields.update(changes)
    return LogRecord(**fields)


def logged(db: psycopg.Connection[T], instance_id: str) -> int:
    row = db.execute(
        "SELECT count(*) AS n FROM gateway.request_log WHERE instance_id = %s", (instance_id,)
    ).fetchone()
    return int(row["n"])


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


# --- client_ip ---------------------------------------------------------------------------


def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert client_ip("203.0.113.9", "198.51.100.1", ()) == "203.0.113.9"
    assert client_ip("203.0.113.9", "198.51.100.1", proxies) == "203.0.113.9"  # untrusted peer
    assert client_ip("10.1.2.3", "198.51.100.1, 10.1.2.3", proxies) == "198.51.100.1"
    assert client_ip("10.1.2.3", "198.51.100.1:5555", proxies) == "198.51.100.1"
    assert client_ip("::1", "[2001:db8::1]:443", proxies) == "2001:db8::1"
    assert client_ip("10.1.2.3", "garbage", proxies) == "10.1.2.3"
    assert client_ip("10.1.2.3", None, proxies) == "10.1.2.3"
    assert client_ip("testclient", None, proxies) is None  # never a non-IP into inet
    assert client_ip(None, "198.51.100.1", proxies) is None


def test_client_ip_takes_the_right_most_untrusted_forwarded_for_entry() -> None:
    """The standard real-IP rule, with chains of 1 to 3 trusted proxies and a client that
    writes its own X-Forwarded-For (the left-most entries are the client's words)."""
    proxies = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    client, spoof = "198.51.100.7", "203.0.113.66"
    # one proxy: it appended the client's address
    assert client_ip("10.0.0.1", client, proxies) == client
    assert client_ip("10.0.0.1", f"{spoof}, {client}", proxies) == client
    # two and three proxies: each appended the address it received the request from
    assert client_ip("10.0.0.2", f"{spoof}, {client}, 10.0.0.1", proxies) == client
    assert client_ip("10.0.0.3", f"{spoof}, {client}, 10.0.0.1, 10.0.0.2", proxies) == client
    assert client_ip("fd00::3", f"{spoof}, [{'2001:db8::7'}]:80, fd00::1", proxies) == (
        "2001:db8::7"
    )
    # only trusted hops: the left-most of them; garbage ends the walk at the last trusted hop
    assert client_ip("10.0.0.2", "10.0.0.9, 10.0.0.1", proxies) == "10.0.0.9"
    assert client_ip("10.0.0.2", f"{client}, garbage, 10.0.0.1", proxies) == "10.0.0.1"
    # an endless header: only its right end is read
    long_chain = ", ".join([spoof] * 10_000 + [client])
    assert client_ip("10.0.0.1", long_chain, proxies) == client


# --- the request log ---------------------------------------------------------------------


def test_copy_batches_and_round_trips_fields(pg_url: str, db: psycopg.Connection[T]) -> None:
    settings = settings_for(pg_url, log_flush_ms=60_000)  # only the 500-row wake flushes
    project_id = str(uuid.uuid4())

    async def scenario() -> dict[str, Any]:
        pool = await open_pool(settings)
        log = RequestLog(settings, pool)
        log.start()
        seen: dict[str, Any] = {}
        try:
            rows = iter(
                record(i, project_id=project_id, api_key_id=str(uuid.uuid4())) for i in range(1200)
            )
            for _ in range(500):
                log.record(next(rows))
            await wait_until_async(lambda: log.written == 500, timeout=30)
            seen["after_500"] = log.stats()
            for _ in range(499):
                log.record(next(rows))
            await asyncio.sleep(0.5)
            seen["after_999"] = log.stats()  # below 500 waiting and 60 s interval: no flush
            log.record(next(rows))
            await wait_until_async(lambda: log.written == 1000, timeout=30)
            for row in rows:
                log.record(row)
            seen["before_stop"] = log.stats()
            await log.stop()
            seen["after_stop"] = log.stats()
            return seen
        finally:
            await pool.close()

    seen = run(scenario())
    print({k: (v["written"], v["batches"], v["depth"]) for k, v in seen.items()})
    assert seen["after_500"]["batches"] == 1
    assert seen["after_999"]["written"] == 500 and seen["after_999"]["depth"] == 499
    assert seen["before_stop"]["batches"] == 2  # the 500th waiting row woke the writer
    after = seen["after_stop"]
    assert after["written"] == 1200 and after["batches"] == 3
    assert after["depth"] == 0 and after["dropped"] == 0
    assert logged(db, settings.instance_id) == 1200
    row = db.execute(
        "SELECT * FROM gateway.request_log WHERE instance_id = %s AND request_id = 'r7'",
        (settings.instance_id,),
    ).fetchone()
    assert str(row["project_id"]) == project_id
    assert row["method"] == "SELECT" and row["path"] == "/db/todos"
    assert row["table_name"] == "todos" and row["status_code"] == 200
    assert row["response_size_bytes"] == 107 and row["row_count"] == 1
    assert str(row["client_ip"]) == "10.0.0.1" and row["user_agent"] == "pytest"
    assert row["duration_ms"] == pytest.approx(1.0)


def test_copy_keeps_text_that_means_something_to_copy(
    pg_url: str, db: psycopg.Connection[T]
) -> None:
    """Tabs, line breaks, backslashes and a literal ``\\N`` in a client's text arrive as
    sent (a NUL, which text can't hold, is dropped); NULLs stay NULL."""
    settings = settings_for(pg_url, log_flush_ms=50)
    agent = "a\tb\nc\rd\\e \\N \\. f\x00g é"
    path = "/db/x\\y\tz"

    async def scenario() -> None:
        pool = await open_pool(settings)
        log = RequestLog(settings, pool)
        log.start()
        log.record(record(1, user_agent=agent, path=path, table_name=None, row_count=None))
        log.record(record(2, duration_ms=float("nan")))
        await log.stop()
        await pool.close()

    run(scenario())
    rows = db.execute(
        "SELECT request_id, user_agent, path, table_name, row_count, duration_ms"
        "  FROM gateway.request_log WHERE instance_id = %s ORDER BY request_id",
        (settings.instance_id,),
    ).fetchall()
    assert [r["request_id"] for r in rows] == ["r1", "r2"]
    assert rows[0]["user_agent"] == agent.replace("\x00", "")
    assert rows[0]["path"] == path
    assert rows[0]["table_name"] is None and rows[0]["row_count"] is None
    assert rows[1]["duration_ms"] != rows[1]["duration_ms"]  # NaN


def test_rows_recorded_during_a_copy_wait_for_their_own_batch(
    pg_url: str, db: psycopg.Connection[T]
) -> None:
    """Under steady load the writer keeps one batch per interval (or per 500 rows): the
    rows recorded while a COPY runs neither extend it nor start the next one at once."""
    settings = settings_for(pg_url, log_flush_ms=60_000)  # only the 500-row wake flushes

    async def scenario(blocker: psycopg.Connection[T]) -> dict[str, Any]:
        pool = await open_pool(settings)
        log = RequestLog(settings, pool)
        log.start()
        try:
            with blocker.transaction():
                # the COPY waits for this lock: rows recorded meanwhile arrive mid-batch
                blocker.execute("LOCK TABLE gateway.request_log IN SHARE MODE")
                for i in range(500):
                    log.record(record(i))
                await wait_until_async(lambda: log._inflight_left == 500, timeout=30)
                for i in range(500, 520):
                    log.record(record(i))
            await wait_until_async(lambda: log.written >= 500, timeout=30)
            await asyncio.sleep(0.5)
            return log.stats()
        finally:
            await log.stop()
            await pool.close()

    with psycopg.connect(pg_url) as blocker:
        seen = run(scenario(blocker))
    assert seen["written"] == 500 and seen["batches"] == 1
    assert seen["depth"] == 20
    assert logged(db, settings.instance_id) == 520  # stop() wrote the rest


def test_stop_flushes_exactly_everything(pg_url: str, db: psycopg.Connection[T]) -> None:
    settings = settings_for(pg_url, log_flush_ms=60_000)

    async def scenario() -> None:
        pool = await open_pool(settings)
        log = RequestLog(settings, pool)
        log.start()
        for i in range(1777):
            log.record(record(i))
        await log.stop()
        await pool.close()

    run(scenario())
    assert logged(db, settings.instance_id) == 1777


def test_record_is_a_no_op_when_disabled(pg_url: str, db: psycopg.Connection[T]) -> None:
    settings = settings_for(pg_url, request_log_enabled=False)

    async def scenario() -> dict[str, Any]:
        pool = await open_pool(settings)
        log = RequestLog(settings, pool)
        log.start()
        log.record(record(1))
        await log.stop()
        await pool.close()
        return log.stats()

    assert run(scenario())["depth"] == 0
    assert logged(db, settings.instance_id) == 0


def test_invalid_row_is_skipped_not_retried_forever(pg_url: str, db: psycopg.Connection[T]) -> None:
    settings = settings_for(pg_url, log_flush_ms=50)

    async def scenario() -> dict[str, Any]:
        pool = await open_pool(settings)
        log = RequestLog(settings, pool)
        log.start()
        log.record(record(1))
        log.record(record(2, project_id="not-a-uuid"))
        log.record(record(3))
        await wait_until_async(lambda: log.depth == 0 and log.written == 2, timeout=30)
        await log.stop()
        await pool.close()
        return log.stats()

    stats = run(scenario())
    assert stats["rejected"] == 1 and stats["written"] == 2
    assert logged(db, settings.instance_id) == 2


def test_outage_keeps_rows_up_to_the_bound_then_drops_oldest(
    pg_url: str,
    pg_control: LocalServerControl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(pg_url, log_flush_ms=50, log_buffer_max=300, pool_timeout_s=0.5)
    caplog.set_level(logging.WARNING, logger="gateway.request_log")

    async def scenario() -> dict[str, Any]:
        pool = await open_pool(settings)
        log = RequestLog(settings, pool)
        log.start()
        try:
            for i in range(100):
                log.record(record(i))
            await wait_until_async(lambda: log.written == 100, timeout=30)
            # the test server runs with synchronous_commit=off: make what is committed
            # (the migrations, these 100 rows) survive the immediate stop
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as c:
                await c.execute("CHECKPOINT")
            await asyncio.to_thread(pg_control.stop)
            record_s = 0.0
            for i in range(100, 1100):
                row = record(i)
                started = time.perf_counter()
                log.record(row)
                record_s += time.perf_counter() - started
                if i % 100 == 0:
                    await asyncio.sleep(0.05)  # let the writer try (and fail) meanwhile
            await asyncio.sleep(1.0)
            during = log.stats()
            await asyncio.to_thread(pg_control.start)
            await wait_until_async(lambda: log.depth == 0, timeout=60)
            await log.stop()
            return {"during": during, "after": log.stats(), "record_s": record_s}
        finally:
            pg_control.ensure_running()
            await pool.close()

    result = run(scenario())
    during, after = result["during"], result["after"]
    print(f"record() during the outage: {result['record_s'] * 1e6 / 1000:.1f} µs per call")
    print("during outage:", during)
    assert during["depth"] <= 300
    assert during["flush_errors"] >= 1
    assert after["dropped"] == 700  # 1000 rows for 300 slots: the 700 oldest went
    assert after["written"] == 400
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the old ones died with the server
        ids = conn.execute(
            "SELECT request_id FROM gateway.request_log WHERE instance_id = %s",
            (settings.instance_id,),
        ).fetchall()
    kept = sorted(int(r[0][1:]) for r in ids)
    assert kept == list(range(100)) + list(range(800, 1100))  # the newest 300 survived
    assert any("dropped" in r.getMessage() for r in caplog.records)


# --- retention and the maintenance leader -----------------------------------------------


def test_retention_deletes_in_bounded_batches(pg_url: str, db: psycopg.Connection[T]) -> None:
    instance = f"ret-{uuid.uuid4().hex[:8]}"
    db.execute(
        """
        INSERT INTO gateway.request_log (created_at, instance_id, method, path, status_code,
                                         duration_ms)
        SELECT now() - interval '40 days' - g * interval '1 second', %s, 'SELECT', '/db/t',
               200, 1
        FROM generate_series(1, 12000) g
        UNION ALL
        SELECT now() - interval '29 days', %s, 'SELECT', '/db/t', 200, 1
        FROM generate_series(1, 10)
        """,
        (instance, instance),
    )

    async def scenario() -> list[int]:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            return [
                await delete_expired_request_log(conn, 30, batch=5000, max_batches=2),
                await delete_expired_request_log(conn, 30, batch=5000, max_batches=2),
                await delete_expired_request_log(conn, 30, batch=5000, max_batches=2),
            ]

    counts = run(scenario())
    assert counts[0] == 10000  # two statements of 5000, then the tick's budget is spent
    assert counts[1] >= 2000 and counts[2] == 0
    assert logged(db, instance) == 10  # the rows inside the retention stay


def test_leader_runs_jobs_exclusively(pg_url: str, db: psycopg.Connection[T]) -> None:
    probe = f"maint_probe_{uuid.uuid4().hex[:8]}"
    db.execute(
        f"CREATE TABLE public.{probe} (instance text, started timestamptz, ended timestamptz)"
    )

    def job_for(instance: str) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[int]]:
        async def job(conn: psycopg.AsyncConnection[Any]) -> int:
            await conn.execute(
                f"INSERT INTO public.{probe} SELECT %s, clock_timestamp(), NULL", (instance,)
            )
            await conn.execute("SELECT pg_sleep(0.15)")
            await conn.execute(
                f"UPDATE public.{probe} SET ended = clock_timestamp() "
                "WHERE instance = %s AND ended IS NULL",
                (instance,),
            )
            return 1

        return job

    async def scenario() -> list[Maintenance]:
        pools, loops = [], []
        for _ in range(2):
            settings = settings_for(pg_url, maintenance_interval_s=0.05)
            pool = await open_pool(settings, max_size=2)
            m = Maintenance(settings, pool)
            m.register("probe", job_for(settings.instance_id))
            pools.append(pool)
            loops.append(m)
        for m in loops:
            m.start()
        await asyncio.sleep(4.0)
        for m in loops:
            await m.stop()
        for pool in pools:
            await pool.close()
        return loops

    loops = run(scenario())
    rows = db.execute(
        f"SELECT instance, started, ended FROM public.{probe} ORDER BY started"
    ).fetchall()
    db.execute(f"DROP TABLE public.{probe}")
    per_instance = {m.settings.instance_id: m.jobs["probe"].runs for m in loops}
    print("job runs per instance:", per_instance, "ticks:", [m.ticks for m in loops])
    assert len(rows) >= 4
    assert all(r["ended"] is not None for r in rows)
    for earlier, later in itertools.pairwise(rows):
        assert earlier["ended"] <= later["started"], (earlier, later)  # never overlapping
    assert sum(per_instance.values()) == len(rows)
    # the other instance asked while a job ran and was refused (the lock was contended)
    assert sum(m.ticks - m.ticks_led for m in loops) >= 1


def test_default_jobs_sample_connections_and_expose_status(
    pg_url: str, db: psycopg.Connection[T]
) -> None:
    settings = settings_for(pg_url, maintenance_interval_s=0.1)

    async def scenario() -> tuple[Maintenance, ConnectionSampler, bool]:
        pool = await open_pool(settings, max_size=3)
        m = Maintenance(settings, pool)
        sampler = ConnectionSampler()
        install_default_jobs(m, sampler)
        extra_ran = asyncio.Event()

        async def extra(conn: psycopg.AsyncConnection[Any]) -> int:
            extra_ran.set()
            return 7

        m.register("extra", extra)
        led = False
        for _ in range(100):  # another test session's leader can't exist: we own this DB
            led = await m.tick()
            if led:
                break
            await asyncio.sleep(0.05)
        await pool.close()
        return m, sampler, led

    m, sampler, led = run(scenario())
    assert led and m.is_leader
    status = m.stats()["jobs"]
    assert status["extra"]["last_count"] == 7 and status["extra"]["runs"] == 1
    assert status["request_log_retention"]["runs"] == 1
    assert status["db_connections"]["last_count"] >= 1
    assert sampler.by_instance.get(settings.instance_id, 0) >= 1


# --- metrics, readiness, access log --------------------------------------------------------


def sample_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_metrics_registries_are_per_app() -> None:
    a = Metrics(Settings(database_url="x", instance_id="a"))
    b = Metrics(Settings(database_url="x", instance_id="b"))
    a.observe_request("/x", 200, 0.01)
    a.count_admission("rate_limited")
    b.register_source("admission", lambda: {"admitted": 5})
    text_a, text_b = a.render().decode(), b.render().decode()
    assert 'gateway_requests_total{route="/x",status="200"} 1.0' in text_a
    assert "gateway_requests_total{" not in text_b
    assert 'gateway_admission_decisions_total{outcome="rate_limited"} 1.0' in text_a
    assert 'gateway_admission_decisions_total{outcome="admitted"} 5.0' in text_b
    assert 'instance_id="a"' in text_a and 'instance_id="b"' in text_b


def test_app_metrics_readyz_and_checks(pg_url: str) -> None:
    from starlette.testclient import TestClient

    from gateway.http.app import create_app

    settings = settings_for(pg_url, maintenance_interval_s=0.1)
    app = create_app(settings)
    state = app.state.gw
    listener_up = {"value": True}
    state.extras["ready_checks"].append(("listener", lambda: listener_up["value"]))
    state.extras["metrics"].register_source(
        "metadata", lambda: {"hits": 3, "misses": 1, "loads": 1, "invalidations": 0, "entries": 1}
    )
    state.extras["metrics"].register_source(
        "listener", lambda: {"up": listener_up["value"], "reconnects": 0}
    )
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "up", "listener": "up"}
        listener_up["value"] = False
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["listener"] == "down"
        listener_up["value"] = True
        client.get("/nowhere")
        # the leader's first sampling tick (tolerated if late: the check below names it)
        eventually(
            lambda: "gateway_db_connections{" in client.get("/metrics").text,
            timeout=20,
            interval=0.1,
        )
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    names = sample_names(text)
    missing = [f for f in FAMILIES if not any(n.startswith(f) for n in names)]
    missing = [f for f in missing if f != "gateway_admission_decisions_total"]  # no traffic
    assert not missing, missing
    assert 'route="/readyz",status="503"' in text
    assert 'route="unmatched",status="404"' in text
    assert f'gateway_db_connections{{gateway_instance="{settings.instance_id}"}}' in text
    assert "gateway_listener_up 1.0" in text and "gateway_metadata_cache_hits_total 3.0" in text


# --- gateway stats -----------------------------------------------------------------------


def test_stats_cli_reports_the_log(pg_url: str, db: psycopg.Connection[T], make_project) -> None:
    hot = make_project(name=f"hot-{uuid.uuid4().hex[:6]}")
    cold = make_project(name=f"cold-{uuid.uuid4().hex[:6]}")
    db.execute("TRUNCATE gateway.request_log")
    rows = []
    for i in range(100):
        instance = "inst-a" if i < 60 else "inst-b"
        project = hot["id"] if i < 70 else cold["id"]
        status = 429 if (i < 70 and i % 7 == 0) else (500 if i == 99 else 200)
        rows.append((instance, project, status, float(i + 1)))
    with db.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO gateway.request_log (instance_id, project_id, method, path,
                                             status_code, duration_ms)
            VALUES (%s, %s, 'SELECT', '/db/todos', %s, %s)
            """,
            rows,
        )
        cur.execute(
            """
            INSERT INTO gateway.request_log (created_at, instance_id, method, path,
                                             status_code, duration_ms)
            VALUES (now() - interval '3 hours', 'inst-old', 'SELECT', '/db/todos', 200, 1)
            """
        )
    result = run_cli(pg_url, "stats", "--since", "1h", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["requests"] == 100 and report["since"] == "1h"
    assert [(i["instance_id"], i["requests"]) for i in report["instances"]] == [
        ("inst-a", 60),
        ("inst-b", 40),
    ]
    assert report["instances"][0]["share_pct"] == 60.0
    top = report["top_projects_by_requests"]
    assert [(p["name"], p["requests"]) for p in top] == [(hot["name"], 70), (cold["name"], 30)]
    assert [(p["name"], p["rate_limited"]) for p in report["top_projects_by_429"]] == [
        (hot["name"], 10)
    ]
    assert report["status_counts"] == {"200": 89, "429": 10, "500": 1}
    assert report["duration_ms"]["p50"] == pytest.approx(50.5)
    assert report["duration_ms"]["p95"] == pytest.approx(95.05)
    assert report["duration_ms"]["p99"] == pytest.approx(99.01)

    wide = json.loads(run_cli(pg_url, "stats", "--since", "2d", "--json").stdout)
    assert wide["requests"] == 101

    human = run_cli(pg_url, "stats", "--since", "30m")
    assert human.returncode == 0, human.stderr
    assert "inst-a" in human.stdout and hot["name"] in human.stdout and "p95" in human.stdout

    bad = run_cli(pg_url, "stats", "--since", "5x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "--since" in bad.stderr


def test_stats_on_an_empty_window(pg_url: str) -> None:
    result = run_cli(pg_url, "stats", "--since", "1s", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["since_seconds"] == 1.0
    assert isinstance(report["instances"], list)


def test_parse_since() -> None:
    from gateway.ops.stats import parse_since

    assert parse_since("30m") == dt.timedelta(minutes=30)
    assert parse_since("1h") == dt.timedelta(hours=1)
    assert parse_since("2d") == dt.timedelta(days=2)
    assert parse_since("90s") == dt.timedelta(seconds=90)
    for bad in ("", "1", "h", "-1h", "0m", "1y"):
        with pytest.raises(ValueError):
            parse_since(bad)


def test_request_log_migration_round_trip(pg_url: str) -> None:
    from gateway.db import migrate

    indexes = "SELECT indexname FROM pg_indexes WHERE tablename = 'request_log' ORDER BY 1"
    with scratch_database(pg_url, "mig_log") as url:
        migrate.upgrade(url)
        with psycopg.connect(url) as conn:
            assert [r[0] for r in conn.execute(indexes).fetchall()] == [
                "request_log_created_at_idx",
                "request_log_pkey",
                "request_log_project_created_at_idx",
            ]
        migrate.downgrade(url, "base")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('gateway.request_log')").fetchone() == (None,)
        migrate.upgrade(url)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('gateway.request_log')").fetchone() != (None,)
