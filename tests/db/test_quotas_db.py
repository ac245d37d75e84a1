"""Plans, overrides and the bandwidth/database quotas against a real PostgreSQL: the
admission statement, the bandwidth meter's flushes, the database-size sampler, the CLI.

The multi-instance proofs (3 real gateway processes) are in tests/cluster/test_quotas_cluster.py.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.control.keys import create_key
from gateway.control.projects import connect, create_project, set_limits
from gateway.errors import GatewayError
from gateway.quotas import dbsize, store
from gateway.quotas.bandwidth import BandwidthMeter
from gateway.settings import Settings
from tests.support.admission import aconnect, admitter, counter_row, run
from tests.support.cli import assert_refused, cli_json, run_cli
from tests.support.quotas import override, set_usage
from tests.support.scratchdb import scratch_database

GIB, MIB = 1024**3, 1024**2


async def refusal(pg_url: str, key: str, *, grows: bool = False, cost: int = 1) -> GatewayError:
    adm = admitter(pg_url)
    async with await aconnect(pg_url) as conn:
        try:
            await adm.admit(conn, key, cost, grows=grows)
        except GatewayError as exc:
            return exc
    raise AssertionError("admitted")


async def admitted(pg_url: str, key: str, *, grows: bool = False) -> bool:
    adm = admitter(pg_url)
    async with await aconnect(pg_url) as conn:
        try:
            await adm.admit(conn, key, 1, grows=grows)
        except GatewayError:
            return False
    return True


# --- plans ----------------------------------------------------------------------------------


def test_plans_are_seeded_and_a_new_project_inherits_free(db: Any, pg_url: str) -> None:
    plans = {
        r["name"]: r for r in db.execute("SELECT * FROM gateway.plans ORDER BY name").fetchall()
    }
    assert set(plans) >= {"free", "starter", "growth", "scale", "enterprise"}
    free = plans["free"]
    # the original's defaults: 10,000 requests/day, 1 GB bandwidth, 100 MB database,
    # 1,000 job runs/month, 100 requests/minute
    assert (
        free["rate_limit_per_minute"],
        free["requests_per_day"],
        free["bandwidth_bytes_monthly"],
        free["db_size_bytes"],
        free["job_runs_monthly"],
    ) == (100, 10_000, GIB, 100 * MIB, 1_000)
    assert plans["enterprise"]["requests_per_day"] == -1
    with connect(pg_url) as conn:
        project = create_project(conn, f"q-{uuid.uuid4().hex[:10]}")
    assert (project.tier, project.rate_limit_per_minute, project.requests_limit_daily) == (
        "free",
        100,
        10_000,
    )
    row = db.execute(
        "SELECT * FROM gateway.project_limits WHERE project_id = %s", [project.id]
    ).fetchone()
    assert row["bandwidth_bytes_monthly"] == GIB and row["db_size_bytes"] == 100 * MIB
    # overrides: NULL inherits, -1 is unlimited; the plan's -1 reads as NULL (unlimited)
    stored = db.execute(
        "SELECT rate_limit_per_minute, requests_limit_daily FROM gateway.projects WHERE id = %s",
        [project.id],
    ).fetchone()
    assert stored == {"rate_limit_per_minute": None, "requests_limit_daily": None}
    override(pg_url, project.id, db_size_bytes=-1, requests_per_day=5)
    with connect(pg_url) as conn:
        moved = set_limits(conn, project.id, plan="enterprise")
    row = db.execute(
        "SELECT * FROM gateway.project_limits WHERE project_id = %s", [project.id]
    ).fetchone()
    assert row["plan"] == "enterprise" and moved.tier == "enterprise"
    assert row["db_size_bytes"] is None and row["bandwidth_bytes_monthly"] is None
    assert row["requests_per_day"] == 5  # the override still wins
    assert row["rate_limit_per_minute"] == 10_000


def test_a_plan_change_is_read_by_the_very_next_admission(db: Any, pg_url: str) -> None:
    plan = f"t{uuid.uuid4().hex[:10]}"
    with connect(pg_url) as conn:
        store.set_plan(conn, plan, {"requests_per_day": 2}, create=True)
        project = create_project(conn, f"q-{uuid.uuid4().hex[:10]}", tier=plan)
        key = create_key(conn, project.id, key_type="server")["key"]

    async def scenario() -> None:
        adm = admitter(pg_url)
        async with await aconnect(pg_url) as conn:
            await adm.admit(conn, key)
            await adm.admit(conn, key)
            with pytest.raises(GatewayError) as info:
                await adm.admit(conn, key)
            assert info.value.code == "REQUEST_QUOTA_EXCEEDED"
            with connect(pg_url) as c:
                store.set_plan(c, plan, {"requests_per_day": 3})
            # a local deny would hold until midnight: the NOTIFY drops it (here by hand,
            # the listener does it in the server; the cluster test proves that path)
            adm.forget_project(project.id)
            await adm.admit(conn, key)
            with pytest.raises(GatewayError):
                await adm.admit(conn, key)

    run(scenario())


def test_plan_change_notifies_every_listener(db: Any, pg_url: str) -> None:
    plan = f"t{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute("LISTEN gateway_metadata")
        with connect(pg_url) as conn:
            store.set_plan(conn, plan, {}, create=True)
            store.set_plan(conn, plan, {"bandwidth_bytes_monthly": 12345})
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert payloads == ["*"]


# --- the admission statement ---------------------------------------------------------------


def test_bandwidth_over_refuses_every_request_and_consumes_nothing(
    db: Any, pg_url: str, make_project: Any
) -> None:
    project = make_project(requests_per_day=100)
    override(pg_url, project["id"], bandwidth_bytes_monthly=1000)
    key = project["public_key"]
    assert run(admitted(pg_url, key))
    used_before = counter_row(db, project["id"])["day_used"]
    set_usage(db, project["id"], bandwidth=1000)  # used >= limit: over
    for grows in (False, True):
        err = run(refusal(pg_url, key, grows=grows))
        assert (err.code, err.status) == ("BANDWIDTH_QUOTA_EXCEEDED", 429)
        violation = {"type": "bandwidth", "used": 1000, "limit": 1000, "percentUsed": 100.0}
        assert err.to_error()["violations"] == [violation]
        assert err.to_error()["details"] == {"violations": [violation]}
        assert int(err.headers["Retry-After"]) >= 1 and "X-RateLimit-Limit" in err.headers
    assert counter_row(db, project["id"])["day_used"] == used_before  # nothing consumed
    set_usage(db, project["id"], bandwidth=999)
    assert run(admitted(pg_url, key))
    # last month's bytes don't count this month
    set_usage(db, project["id"], bandwidth=10**9, months_ago=1)
    assert run(admitted(pg_url, key))
    # unlimited (override -1)
    set_usage(db, project["id"], bandwidth=10**9)
    override(pg_url, project["id"], bandwidth_bytes_monthly=-1)
    assert run(admitted(pg_url, key))


def test_database_over_refuses_inserts_and_updates_only(
    db: Any, pg_url: str, make_project: Any
) -> None:
    project = make_project()
    override(pg_url, project["id"], db_size_bytes=8192)
    key = project["server_key"]
    set_usage(db, project["id"], db_size=16384)
    err = run(refusal(pg_url, key, grows=True))
    assert (err.code, err.status) == ("DATABASE_QUOTA_EXCEEDED", 429)
    assert err.to_error()["violations"] == [
        {"type": "database", "used": 16384, "limit": 8192, "percentUsed": 200.0}
    ]
    assert run(admitted(pg_url, key, grows=False))  # selects and deletes
    set_usage(db, project["id"], db_size=8191)
    assert run(admitted(pg_url, key, grows=True))


def test_several_quotas_over_is_multiple_quotas_exceeded(
    db: Any, pg_url: str, make_project: Any
) -> None:
    project = make_project(requests_per_day=1)
    override(pg_url, project["id"], bandwidth_bytes_monthly=10, db_size_bytes=10)
    key = project["server_key"]
    assert run(admitted(pg_url, key))  # uses the day's one request
    set_usage(db, project["id"], bandwidth=20, db_size=40)
    err = run(refusal(pg_url, key, grows=True))
    assert (err.code, err.status) == ("MULTIPLE_QUOTAS_EXCEEDED", 429)
    assert err.to_error()["violations"] == [
        {"type": "database", "used": 40, "limit": 10, "percentUsed": 400.0},
        {"type": "requests", "used": 1, "limit": 1, "percentUsed": 100.0},
        {"type": "bandwidth", "used": 20, "limit": 10, "percentUsed": 200.0},
    ]
    assert err.to_error()["message"].startswith("3 quotas exceeded")
    read = run(refusal(pg_url, key, grows=False))
    assert [v["type"] for v in read.to_error()["violations"]] == ["requests", "bandwidth"]


def test_used_up_bandwidth_is_refused_locally_until_a_change_notifies(
    db: Any, pg_url: str, make_project: Any
) -> None:
    project = make_project()
    override(pg_url, project["id"], bandwidth_bytes_monthly=100)
    set_usage(db, project["id"], bandwidth=150)
    key = project["server_key"]

    async def scenario() -> None:
        adm = admitter(pg_url, invalidation_live=lambda: True)
        async with await aconnect(pg_url) as conn:
            with pytest.raises(GatewayError):
                await adm.admit(conn, key)
            decisions = adm.stats()["db_decisions"]
            with pytest.raises(GatewayError) as info:
                adm.check_local(key)  # no round trip
            assert info.value.code == "BANDWIDTH_QUOTA_EXCEEDED"
            assert info.value.to_error()["violations"][0]["used"] == 150
            assert adm.stats()["db_decisions"] == decisions
            adm.forget_project(project["id"])  # the NOTIFY of a limit change
            adm.check_local(key)

    run(scenario())


# --- the bandwidth meter -------------------------------------------------------------------


async def _pool(pg_url: str) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        pg_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    return pool


def test_meters_of_several_instances_add_up_exactly(
    db: Any, pg_url: str, make_project: Any
) -> None:
    a, b = make_project(), make_project()
    set_usage(db, b["id"], bandwidth=10**6, months_ago=1)  # last month's: starts over

    async def scenario() -> None:
        pool = await _pool(pg_url)
        try:
            settings = Settings(database_url=pg_url, bandwidth_flush_ms=20)
            meters = [BandwidthMeter(settings, pool) for _ in range(3)]
            for m in meters:
                m.start()
            for i in range(300):
                meters[i % 3].add(a["id"], 100)
                meters[(i + 1) % 3].add(b["id"], 7)
                if i % 50 == 0:
                    await asyncio.sleep(0.03)
            for m in meters:
                await m.stop()  # flushes the rest
            assert all(m.pending() == 0 for m in meters)
            assert sum(m.flushes for m in meters) >= 3
        finally:
            await pool.close()

    run(scenario())
    rows = {
        str(r["project_id"]): r
        for r in db.execute(
            "SELECT * FROM gateway.quota_usage WHERE project_id = ANY(%s)",
            [[uuid.UUID(a["id"]), uuid.UUID(b["id"])]],
        ).fetchall()
    }
    assert rows[a["id"]]["bandwidth_bytes"] == 300 * 100
    assert rows[b["id"]]["bandwidth_bytes"] == 300 * 7
    month = db.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date AS m").fetchone()
    assert rows[b["id"]]["bandwidth_month"] == month["m"]


def test_a_failed_flush_keeps_the_bytes(db: Any, pg_url: str, make_project: Any) -> None:
    project = make_project()

    async def scenario() -> None:
        meter = BandwidthMeter(Settings(database_url=pg_url), None)
        meter.add(project["id"], 500)
        assert not await meter.flush()  # no pool: fails, keeps the bytes
        assert meter.pending(project["id"]) == 500 and meter.flush_errors == 1
        meter.add(project["id"], 1)
        meter.pool = await _pool(pg_url)
        try:
            assert await meter.flush()
        finally:
            await meter.pool.close()

    run(scenario())
    row = db.execute(
        "SELECT bandwidth_bytes FROM gateway.quota_usage WHERE project_id = %s", [project["id"]]
    ).fetchone()
    assert row["bandwidth_bytes"] == 501


# --- the database-size sampler --------------------------------------------------------------


def _schema_size(db: Any, schema: str) -> int:
    return int(
        db.execute(
            """
            SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS s
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = %s AND c.relkind IN ('r', 'm')
            """,
            [schema],
        ).fetchone()["s"]
    )


def test_sampler_measures_in_bounded_batches_and_at_most_every_interval(
    db: Any, pg_url: str, make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    projects = [make_project() for _ in range(5)]
    first = projects[0]
    db.execute(
        f'INSERT INTO "{first["schema_name"]}".todos (title) '
        "SELECT repeat('x', 500) FROM generate_series(1, 200)"
    )
    monkeypatch.setattr(dbsize, "BATCH", 2)
    sampler = dbsize.DbSizeSampler(sample_s=3600)

    async def tick() -> int:
        async with await aconnect(pg_url) as conn:
            return await sampler.run(conn)

    measured = run(tick())
    assert measured >= 5
    rows = {
        str(r["project_id"]): r
        for r in db.execute(
            "SELECT * FROM gateway.quota_usage WHERE project_id = ANY(%s)",
            [[uuid.UUID(p["id"]) for p in projects]],
        ).fetchall()
    }
    assert set(rows) == {p["id"] for p in projects}
    assert rows[first["id"]]["db_size_bytes"] == _schema_size(db, first["schema_name"])
    assert rows[first["id"]]["db_size_bytes"] > 100_000
    assert rows[projects[1]["id"]]["db_size_bytes"] < rows[first["id"]]["db_size_bytes"]
    # sampled a moment ago: not due again within the interval
    assert run(tick()) == 0


def test_sampler_vacuums_an_over_limit_project_so_deletes_count(
    db: Any, pg_url: str, make_project: Any
) -> None:
    project = make_project()
    table = f'"{project["schema_name"]}".todos'
    db.execute(f"INSERT INTO {table} (title) SELECT repeat('x', 800) FROM generate_series(1, 500)")
    sampler = dbsize.DbSizeSampler(sample_s=0.1)

    async def tick() -> None:
        async with await aconnect(pg_url) as conn:
            await sampler.run(conn)

    run(tick())
    full = db.execute(
        "SELECT db_size_bytes FROM gateway.quota_usage WHERE project_id = %s", [project["id"]]
    ).fetchone()["db_size_bytes"]
    override(pg_url, project["id"], db_size_bytes=full - 1)  # over the limit now
    db.execute(f"DELETE FROM {table}")
    # make the project "used since the sample" (as a request through the gateway would)
    run(admitted(pg_url, project["server_key"]))
    import time

    time.sleep(0.2)
    run(tick())
    after = db.execute(
        "SELECT db_size_bytes FROM gateway.quota_usage WHERE project_id = %s", [project["id"]]
    ).fetchone()["db_size_bytes"]
    assert sampler.vacuumed >= 1
    assert after < full - 1, (full, after)


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_plans_overrides_and_usage(db: Any, pg_url: str) -> None:
    plans = cli_json(pg_url, "plan", "list")["plans"]
    seeded = ["free", "starter", "growth", "scale", "enterprise"]
    assert [p["name"] for p in plans if p["name"] in seeded] == seeded  # the ladder's order
    by_name = {p["name"]: p for p in plans}
    assert by_name["free"]["requests_per_day"] == 10_000
    assert by_name["enterprise"]["requests_per_day"] is None  # unlimited
    plan = f"t{uuid.uuid4().hex[:10]}"
    created = cli_json(pg_url, "plan", "set", plan, "--create", "--bandwidth-bytes-monthly", "20KB")
    assert created["bandwidth_bytes_monthly"] == 20 * 1024
    assert created["requests_per_day"] == 10_000  # from free
    changed = cli_json(pg_url, "plan", "set", plan, "--requests-per-day", "unlimited")
    assert changed["requests_per_day"] is None
    name = f"q-{uuid.uuid4().hex[:10]}"
    project = cli_json(pg_url, "project", "create", name, "--plan", plan)
    assert project["tier"] == plan and project["requests_limit_daily"] is None
    # the old flags keep working (overrides); a new one, and "plan" to inherit again
    limited = cli_json(
        pg_url,
        "project",
        "set-limits",
        name,
        "--rate-limit-per-minute",
        "7",
        "--requests-per-day",
        "9",
        "--db-size-bytes",
        "1MB",
    )
    assert (limited["rate_limit_per_minute"], limited["requests_limit_daily"]) == (7, 9)
    cli_json(pg_url, "project", "set-limits", name, "--requests-per-day", "plan")
    usage = cli_json(pg_url, "project", "usage", name)
    assert usage["plan"] == plan
    assert usage["requests_today"] == {
        "used": 0,
        "limit": None,
        "unlimited": True,
        "percent_used": None,
    }
    assert usage["database_size"]["limit"] == MIB
    assert usage["bandwidth_month"]["limit"] == 20 * 1024
    assert usage["bandwidth_month"]["percent_used"] == 0.0
    assert usage["job_runs_month"]["used"] == 0
    assert usage["job_runs_month"]["source"] == "gateway.job_usage"
    assert usage["job_runs_month"]["limit"] == 1_000
    # one job run counted by the jobs capability's own counter shows up in the usage
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT * FROM gateway.count_job_run(%s)", (project["id"],))
    assert cli_json(pg_url, "project", "usage", name)["job_runs_month"]["used"] == 1
    text = run_cli(pg_url, "project", "usage", name)
    assert text.returncode == 0 and "bandwidth this month" in text.stdout
    assert "job runs this month" in text.stdout
    # refusals: one line, exit 2
    assert_refused(
        run_cli(pg_url, "plan", "set", "nope-plan", "--requests-per-day", "1"), "no plan"
    )
    assert_refused(
        run_cli(pg_url, "plan", "set", plan, "--db-size-bytes", "lots"), "--db-size-bytes"
    )
    assert_refused(
        run_cli(pg_url, "project", "create", "x" + name, "--plan", "gold"), "plan (tier) 'gold'"
    )
    assert_refused(run_cli(pg_url, "project", "set-limits", name), "nothing to change")
    assert_refused(
        run_cli(pg_url, "project", "set-limits", name, "--rate-limit-per-minute", "unlimited"),
        "can't be unlimited",
    )


# --- the migration ----------------------------------------------------------------------------


def test_migration_downgrades_and_upgrades_again(db: Any, pg_url: str) -> None:
    """0010 down to 0005 and back up, in a scratch database: limits survive as numbers,
    the old admit comes back, and the new one again."""
    from gateway.db import migrate

    with scratch_database(pg_url, "scratch") as url:
        migrate.upgrade(url, "0005")
        with connect(url) as conn:
            conn.execute(
                "INSERT INTO gateway.projects (name, schema_name, tier, rate_limit_per_minute, "
                "requests_limit_daily) VALUES ('a', 'p_aaaaaaaaaaaa', 'growth', 100, 10000), "
                "('b', 'p_bbbbbbbbbbbb', 'free', 100, 10000)"
            )
            conn.commit()
        migrate.upgrade(url, "0010")
        with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
            rows = conn.execute(
                "SELECT p.name, p.rate_limit_per_minute AS o, l.rate_limit_per_minute AS e "
                "FROM gateway.projects p JOIN gateway.project_limits l ON l.project_id = p.id "
                "ORDER BY p.name"
            ).fetchall()
        # growth's 100 differs from the plan's 1000: kept as an override; free's inherits
        assert rows == [{"name": "a", "o": 100, "e": 100}, {"name": "b", "o": None, "e": 100}]
        migrate.downgrade(url, "0005")
        with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
            rows = conn.execute(
                "SELECT name, rate_limit_per_minute, requests_limit_daily FROM gateway.projects "
                "ORDER BY name"
            ).fetchall()
            assert [r["rate_limit_per_minute"] for r in rows] == [100, 100]
            args = conn.execute("SELECT pronargs FROM pg_proc WHERE proname = 'admit'").fetchone()
            assert args["pronargs"] == 5
        migrate.upgrade(url, "heads")


def test_cli_job_timeout_bound_per_plan_and_override(db: Any, pg_url: str) -> None:
    """Issue 20: each plan bounds a job's timeoutMs (never unlimited); a project may
    override it; usage shows the effective bound."""
    by_name = {p["name"]: p for p in cli_json(pg_url, "plan", "list")["plans"]}
    assert by_name["free"]["job_timeout_ms_max"] == 60_000
    assert by_name["enterprise"]["job_timeout_ms_max"] == 1_800_000
    name = f"q-{uuid.uuid4().hex[:10]}"
    project = cli_json(pg_url, "project", "create", name)
    assert cli_json(pg_url, "project", "usage", name)["job_timeout_ms_max"] == 60_000
    cli_json(pg_url, "project", "set-limits", name, "--job-timeout-ms-max", "120000")
    assert cli_json(pg_url, "project", "usage", name)["job_timeout_ms_max"] == 120_000
    assert_refused(
        run_cli(pg_url, "project", "set-limits", name, "--job-timeout-ms-max", "unlimited"),
        "can't be unlimited",
    )
    assert_refused(
        run_cli(pg_url, "project", "set-limits", name, "--job-timeout-ms-max", "999"),
        "at least 1000",
    )
    cli_json(pg_url, "project", "set-limits", name, "--job-timeout-ms-max", "plan")
    assert cli_json(pg_url, "project", "usage", name)["job_timeout_ms_max"] == 60_000
    assert project["name"] == name
