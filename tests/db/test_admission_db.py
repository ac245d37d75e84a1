"""Admission against a real PostgreSQL: outcomes, exactness, windows, quotas, timeouts.

These tests drive ``gateway.admission.Admitter`` directly (no HTTP). Tests that count
inside one window first wait for a window with enough time left (database clock), so
they never straddle a boundary by accident.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from gateway.admission.admitter import Admitter
from gateway.admission.decision import Admission
from gateway.admission.headers import admission_headers
from gateway.control.keys import create_key, revoke_key
from gateway.control.projects import connect, set_limits
from gateway.errors import GatewayError
from gateway.settings import Settings
from tests.support.admission import (
    LONG_WINDOW_S,
    aconnect,
    admitter,
    counter_row,
    db_epoch,
    fresh_window,
    run,
    wait_for_window_position,
)

# --- helpers ----------------------------------------------------------------------------


async def outcome(adm: Admitter, conn: AsyncConnection[Any], key: str | None, cost: int = 1) -> str:
    try:
        await adm.admit(conn, key, cost)
        return "admitted"
    except GatewayError as exc:
        return exc.code


async def admit_many(
    adm: Admitter, pg_url: str, key: str, n: int, *, cost: int = 1, concurrency: int = 5
) -> tuple[Counter[str], list[Admission]]:
    """n admissions with ``concurrency`` connections in flight."""
    conns = [await aconnect(pg_url) for _ in range(concurrency)]
    outcomes: Counter[str] = Counter()
    admitted: list[Admission] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(conn: AsyncConnection[Any]) -> None:
        while not queue.empty():
            queue.get_nowait()
            try:
                admitted.append(await adm.admit(conn, key, cost))
                outcomes["admitted"] += 1
            except GatewayError as exc:
                outcomes[exc.code] += 1

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    return outcomes, admitted


# --- outcomes ---------------------------------------------------------------------------


def test_outcome_for_each_key_state(pg_url: str, db: Any, make_project: Any) -> None:
    project = make_project(rate_limit_per_minute=1000, requests_per_day=1000)
    adm = admitter(pg_url)
    with connect(pg_url) as pconn:
        revoked = create_key(pconn, project["id"], key_type="server")
        revoke_key(pconn, revoked["id"])
        expired = create_key(pconn, project["id"], key_type="public")
    db.execute(
        "UPDATE gateway.api_keys SET expires_at = now() - interval '1 second' WHERE id = %s",
        [expired["id"]],
    )

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            admission = await adm.admit(conn, project["public_key"], 1)
            assert admission.project_id == project["id"]
            assert admission.schema_name == project["schema_name"]
            assert admission.key_id == project["public_key_id"]
            assert admission.principal.key_type == "public"
            assert admission.principal.scopes == frozenset({"read", "write"})
            assert admission.rate_limit == 1000
            assert admission.rate_remaining == 999
            assert admission.quota_used == 1 and admission.quota_limit == 1000
            server = await adm.admit(conn, project["server_key"], 1)
            assert server.principal.key_type == "server"
            assert server.rate_remaining == 998

            for key, code, status in [
                (None, "INVALID_API_KEY", 401),
                ("", "INVALID_API_KEY", 401),
                ("sheen_pk_doesnotexist", "INVALID_API_KEY", 401),
                (revoked["key"], "REVOKED_API_KEY", 401),
                (expired["key"], "EXPIRED_API_KEY", 401),
            ]:
                with pytest.raises(GatewayError) as info:
                    await adm.admit(conn, key, 1)
                assert (info.value.code, info.value.status) == (code, status)
                assert "X-RateLimit-Limit" not in info.value.headers

    run(scenario())
    # refused keys never touched the counters
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == 2 and row["day_used"] == 2

    with connect(pg_url) as pconn:
        set_limits(pconn, project["id"], status="suspended")

    async def suspended() -> None:
        async with await aconnect(pg_url) as conn:
            with pytest.raises(GatewayError) as info:
                await adm.admit(conn, project["public_key"], 1)
            assert (info.value.code, info.value.status) == ("PROJECT_SUSPENDED", 403)

    run(suspended())
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == 2 and row["day_used"] == 2


def test_headers_and_rate_limited_error_shape(pg_url: str, db: Any, make_project: Any) -> None:
    project = make_project(rate_limit_per_minute=2)
    adm = admitter(pg_url, invalidation_live=lambda: True)
    fresh_window(db, LONG_WINDOW_S, 60)

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            first = await adm.admit(conn, project["public_key"], 1)
            headers = admission_headers(first)
            assert headers["X-RateLimit-Limit"] == "2"
            assert headers["X-RateLimit-Remaining"] == "1"
            reset = int(headers["X-RateLimit-Reset"])
            assert reset % LONG_WINDOW_S == 0  # the end of the fixed window (epoch seconds)
            assert 0 < reset - time.time() <= LONG_WINDOW_S + 5
            assert headers["RateLimit-Policy"] == f'"minute";q=2;w={LONG_WINDOW_S}'
            t = first.rate_reset_in
            assert headers["RateLimit"] == f'"minute";r=1;t={t}'
            assert abs((reset - time.time()) - t) <= 3
            await adm.admit(conn, project["public_key"], 1)
            for local in (False, True):  # from the database, then the local deny
                with pytest.raises(GatewayError) as info:
                    await adm.admit(conn, project["public_key"], 1)
                err = info.value
                assert (err.code, err.status) == ("RATE_LIMIT_EXCEEDED", 429)
                h = err.headers
                assert h["X-RateLimit-Limit"] == "2"
                assert h["X-RateLimit-Remaining"] == "0"
                assert h["X-RateLimit-Reset"] == str(reset)
                retry_after = int(h["Retry-After"])
                t_value = int(h["RateLimit"].rsplit("t=", 1)[1])
                assert retry_after >= 1 and retry_after >= t_value
                assert h["RateLimit"].startswith('"minute";r=0;')
                assert adm.stats()["local_denied"] == (1 if local else 0)

    run(scenario())


def test_quota_exceeded_error_shape_and_denials_do_not_consume(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=100_000, requests_per_day=5)
    adm = admitter(pg_url)

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            assert await outcome(adm, conn, project["public_key"], 4) == "admitted"
            # a batch of 3 doesn't fit (4 + 3 > 5): refused, and it consumes nothing
            with pytest.raises(GatewayError) as info:
                await adm.admit(conn, project["public_key"], 3)
            err = info.value
            assert (err.code, err.status) == ("REQUEST_QUOTA_EXCEEDED", 429)
            violation = {"type": "requests", "used": 4, "limit": 5, "percentUsed": 80.0}
            assert err.to_error()["details"] == {"violations": [violation]}
            assert err.to_error()["violations"] == [violation]
            assert err.to_error()["code"] == "REQUEST_QUOTA_EXCEEDED"
            assert int(err.headers["Retry-After"]) >= 1
            assert "X-RateLimit-Limit" in err.headers
            assert await outcome(adm, conn, project["public_key"], 1) == "admitted"
            for _ in range(5):
                assert await outcome(adm, conn, project["public_key"]) == "REQUEST_QUOTA_EXCEEDED"

    run(scenario())
    row = counter_row(db, project["id"])
    assert row is not None and row["day_used"] == 5


def test_rate_limited_requests_do_not_consume_quota(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=3, requests_per_day=100)
    adm = admitter(pg_url)
    fresh_window(db, LONG_WINDOW_S, 60)
    counts, _ = run(admit_many(adm, pg_url, project["server_key"], 10, concurrency=1))
    assert counts == {"admitted": 3, "RATE_LIMIT_EXCEEDED": 7}
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == 3 and row["day_used"] == 3


def test_batch_costs_n(pg_url: str, db: Any, make_project: Any) -> None:
    project = make_project(rate_limit_per_minute=10, requests_per_day=100)
    adm = admitter(pg_url)
    fresh_window(db, LONG_WINDOW_S, 60)

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            first = await adm.admit(conn, project["server_key"], 4)
            assert first.rate_remaining == 6 and first.quota_used == 4
            # 7 doesn't fit into the 6 left: refused, but the room stays (no local deny)
            with pytest.raises(GatewayError) as info:
                await adm.admit(conn, project["server_key"], 7)
            assert info.value.code == "RATE_LIMIT_EXCEEDED"
            assert info.value.headers["X-RateLimit-Remaining"] == "6"
            assert adm.stats()["local_deny_entries"] == 0
            last = await adm.admit(conn, project["server_key"], 6)
            assert last.rate_remaining == 0 and last.quota_used == 10

    run(scenario())
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == 10 and row["day_used"] == 10


# --- exactness under concurrency ----------------------------------------------------


def test_concurrent_admissions_in_one_process_are_exact(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=25, requests_per_day=1000)
    adm = admitter(pg_url)
    fresh_window(db, LONG_WINDOW_S, 60)
    counts, admitted = run(admit_many(adm, pg_url, project["public_key"], 80, concurrency=8))
    assert counts["admitted"] == 25
    assert counts["RATE_LIMIT_EXCEEDED"] == 55
    # every admitted request saw a distinct count: remaining 24, 23, ..., 0
    assert sorted(a.rate_remaining for a in admitted) == list(range(25))


# --- windows ----------------------------------------------------------------------------


def _boundary_burst(
    pg_url: str, db: Any, make_project: Any, algorithm: str, window_s: int, limit: int
) -> tuple[int, int, float]:
    """``limit`` requests late in window N, then ``limit`` right after the boundary.

    Returns (admitted in window N, admitted in window N+1, elapsed fraction of window N+1
    when the second burst ended, database clock).
    """
    project = make_project(rate_limit_per_minute=limit)
    adm = admitter(
        pg_url,
        rate_limit_window_s=window_s,
        rate_limit_algorithm=algorithm,
        invalidation_live=lambda: True,
    )
    for _ in range(5):
        wait_for_window_position(db, window_s, window_s - 1.2, window_s - 0.9)
        first, a1 = run(admit_many(adm, pg_url, project["server_key"], limit, concurrency=5))
        windows = {a.rate_reset_epoch for a in a1}
        if len(windows) != 1:
            continue  # the machine was too slow: the first burst crossed the boundary; retry
        boundary = windows.pop()
        wait = boundary + 0.05 - db_epoch(db)
        if wait < 0:
            continue
        time.sleep(wait)
        adm.forget_all()
        second, a2 = run(admit_many(adm, pg_url, project["server_key"], limit, concurrency=5))
        elapsed = (db_epoch(db) - boundary) / window_s
        assert all(a.rate_reset_epoch == boundary + window_s for a in a2)
        print(algorithm, "first", first, "second", second, "elapsed fraction", elapsed)
        return first["admitted"], second["admitted"], elapsed
    pytest.skip("machine too slow to place a burst inside one window")


def test_fixed_window_admits_up_to_twice_the_limit_across_a_boundary(
    pg_url: str, db: Any, make_project: Any
) -> None:
    first, second, _ = _boundary_burst(pg_url, db, make_project, "fixed", 4, 10)
    assert first == 10 and second == 10  # 2x the limit within ~1 second: the known flaw


def test_sliding_window_caps_the_boundary_burst(pg_url: str, db: Any, make_project: Any) -> None:
    limit, window_s = 10, 4
    first, second, elapsed = _boundary_burst(pg_url, db, make_project, "sliding", window_s, limit)
    assert first == limit
    # the estimate previous x (1 - elapsed) + current lets through only what the previous
    # window's share has decayed by: at most floor(limit x elapsed) (documented rounding)
    assert second <= math.floor(limit * min(1.0, elapsed))
    assert first + second <= limit + math.floor(limit * min(1.0, elapsed))


def test_sliding_estimate_and_reset_from_the_database(
    pg_url: str, db: Any, make_project: Any
) -> None:
    """The function's sliding arithmetic, checked directly (window 100 s, previous = 10)."""
    project = make_project(rate_limit_per_minute=10)
    key_hash = db.execute(
        "SELECT key_hash FROM gateway.api_keys WHERE id = %s", [project["server_key_id"]]
    ).fetchone()["key_hash"]
    now = db_epoch(db)
    window_start = math.floor(now / 100) * 100
    elapsed = now - window_start
    # previous window: 10 admitted; current: 0
    db.execute(
        """INSERT INTO gateway.admission_counters VALUES
           (%s, 100, %s, 0, 10, (now() AT TIME ZONE 'UTC')::date, 0, true)""",
        [project["id"], window_start],
    )
    row = db.execute("SELECT * FROM gateway.admit(%s, 1, 100, true)", [key_hash]).fetchone()
    fraction = elapsed / 100
    room = 10 - 10 * (1 - fraction)
    if room >= 1:
        assert row["outcome"] == "admitted"
    else:
        assert row["outcome"] == "rate_limited"
        assert row["rate_remaining"] == 0
        # one request fits once 10 x (1 - e/100) + 0 + 1 <= 10, i.e. e >= 10 s
        assert row["reset_at"] == pytest.approx(window_start + 10, abs=1e-6)
    assert row["window_s"] == 100


def test_window_rolls_and_table_stays_bounded(pg_url: str, db: Any, make_project: Any) -> None:
    projects = [make_project(rate_limit_per_minute=2) for _ in range(3)]
    adm = admitter(pg_url, rate_limit_window_s=1)
    before = db.execute("SELECT count(*) AS n FROM gateway.admission_counters").fetchone()["n"]
    windows: set[int] = set()

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            deadline = time.monotonic() + 4.5
            while time.monotonic() < deadline:
                for project in projects:
                    try:
                        a = await adm.admit(conn, project["server_key"], 1)
                        windows.add(a.rate_reset_epoch)
                    except GatewayError as exc:
                        assert exc.code == "RATE_LIMIT_EXCEEDED"
                await asyncio.sleep(0.05)

    run(scenario())
    assert len(windows) >= 3  # admitted in several windows
    after = db.execute("SELECT count(*) AS n FROM gateway.admission_counters").fetchone()["n"]
    assert after - before == 3  # one row per project, however many windows passed
    for project in projects:
        row = counter_row(db, project["id"])
        assert row is not None and row["window_count"] <= 2
        assert row["day_used"] >= len(windows)  # the day's usage kept accumulating


def test_counter_updates_are_hot(pg_url: str, db: Any, make_project: Any) -> None:
    """Every counter update is a heap-only tuple update: no index is ever touched."""
    project = make_project()
    adm = admitter(pg_url)
    stats_sql = (
        "SELECT n_tup_upd AS upd, n_tup_hot_upd AS hot FROM pg_stat_user_tables "
        "WHERE relid = 'gateway.admission_counters'::regclass"
    )

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            await adm.admit(conn, project["server_key"], 1)  # the INSERT
            await conn.execute("SELECT pg_stat_force_next_flush()")
            await conn.execute("SELECT 1")
            before = db.execute(stats_sql).fetchone()
            for _ in range(200):
                await adm.admit(conn, project["server_key"], 1)
            await conn.execute("SELECT pg_stat_force_next_flush()")
            await conn.execute("SELECT 1")
            after = db.execute(stats_sql).fetchone()
            updates, hot = after["upd"] - before["upd"], after["hot"] - before["hot"]
            print(f"{updates} counter updates, {hot} HOT")
            assert updates >= 200
            # all of them in practice; an old snapshot held elsewhere could block pruning
            assert hot >= 0.95 * updates

    run(scenario())


def test_last_used_at_written_at_most_once_a_minute(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project()
    adm = admitter(pg_url)

    def last_used() -> Any:
        return db.execute(
            "SELECT last_used_at, xmin::text AS xmin FROM gateway.api_keys WHERE id = %s",
            [project["server_key_id"]],
        ).fetchone()

    assert last_used()["last_used_at"] is None
    run(admit_many(adm, pg_url, project["server_key"], 1, concurrency=1))
    first = last_used()
    assert first["last_used_at"] is not None
    run(admit_many(adm, pg_url, project["server_key"], 20, concurrency=4))
    assert last_used() == first  # not even a new row version
    db.execute(
        "UPDATE gateway.api_keys SET last_used_at = now() - interval '61 seconds' WHERE id = %s",
        [project["server_key_id"]],
    )
    run(admit_many(adm, pg_url, project["server_key"], 1, concurrency=1))
    assert last_used()["last_used_at"] > first["last_used_at"]


def test_admission_commits_on_its_own(pg_url: str, db: Any, make_project: Any) -> None:
    project = make_project()
    adm = admitter(pg_url)

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            await adm.admit(conn, project["server_key"], 3)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            # visible from another connection before this one does anything else
            row = counter_row(db, project["id"])
            assert row is not None and row["window_count"] == 3 and row["day_used"] == 3
            # and the counter row is not locked by this connection
            async with await aconnect(pg_url) as other:
                cur = await other.execute(
                    "SELECT 1 FROM gateway.admission_counters WHERE project_id = %s "
                    "FOR UPDATE NOWAIT",
                    [project["id"]],
                )
                assert await cur.fetchone() == (1,)

    run(scenario())


def test_refuses_a_connection_inside_a_transaction(pg_url: str, make_project: Any) -> None:
    project = make_project()
    adm = admitter(pg_url)

    async def scenario() -> None:
        async with await AsyncConnection.connect(pg_url) as conn:  # not autocommit
            with pytest.raises(RuntimeError):
                await adm.admit(conn, project["server_key"], 1)

    run(scenario())


# --- failure: the database can't decide --------------------------------------------------


def test_locked_counter_row_gives_a_fast_503(pg_url: str, db: Any, make_project: Any) -> None:
    project = make_project()
    adm = admitter(pg_url, admission_timeout_ms=300)

    async def scenario() -> float:
        async with await aconnect(pg_url) as conn:
            await adm.admit(conn, project["server_key"], 1)  # creates the row
            with psycopg.connect(pg_url) as holder:
                holder.execute(
                    "SELECT 1 FROM gateway.admission_counters WHERE project_id = %s FOR UPDATE",
                    [project["id"]],
                )
                started = time.monotonic()
                with pytest.raises(GatewayError) as info:
                    await adm.admit(conn, project["server_key"], 1)
                took = time.monotonic() - started
                holder.rollback()
            assert (info.value.code, info.value.status) == ("SERVICE_UNAVAILABLE", 503)
            assert info.value.headers == {"Retry-After": "1"}
            # the connection is still usable afterwards
            assert (await adm.admit(conn, project["server_key"], 1)).quota_used == 2
            return took

    took = run(scenario())
    print(f"503 after {took * 1000:.0f} ms (admission timeout 300 ms)")
    assert took < 5.0
    assert adm.stats()["unavailable"] == 1


class FreezableProxy:
    """A TCP proxy to PostgreSQL that can stop forwarding (a silent network partition)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.frozen.is_set():
                    await asyncio.sleep(3600)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_unreachable_database_gives_a_fast_503_not_a_hang(pg_url: str, make_project: Any) -> None:
    project = make_project()
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    adm = admitter(pg_url, admission_timeout_ms=300)

    async def scenario() -> float:
        proxy = FreezableProxy(int(info.get("port", 5432)))
        await proxy.start()
        url = psycopg.conninfo.make_conninfo(pg_url, host="127.0.0.1", port=proxy.port)
        try:
            async with await aconnect(url) as conn:
                await adm.admit(conn, project["server_key"], 1)
                proxy.frozen.set()
                started = time.monotonic()
                with pytest.raises(GatewayError) as err:
                    await adm.admit(conn, project["server_key"], 1)
                took = time.monotonic() - started
                assert (err.value.code, err.value.status) == ("SERVICE_UNAVAILABLE", 503)
                assert err.value.headers["Retry-After"] == "1"
                # a broken connection afterwards is also a 503, not an exception
                with pytest.raises(GatewayError) as err2:
                    await adm.admit(conn, project["server_key"], 1)
                assert err2.value.status == 503
                return took
        finally:
            await proxy.close()

    took = run(scenario())
    print(f"503 after {took * 1000:.0f} ms with a silent network (admission timeout 300 ms)")
    assert took < 3.0


# --- local deny ---------------------------------------------------------------------------


def test_local_deny_skips_the_database_and_is_capped_without_invalidation(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=3)
    adm = admitter(pg_url)  # invalidation not live: local denies last at most 1 s
    fresh_window(db, LONG_WINDOW_S, 60)

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            for _ in range(3):
                await adm.admit(conn, project["public_key"], 1)
            assert await outcome(adm, conn, project["public_key"]) == "RATE_LIMIT_EXCEEDED"
            decisions = adm.stats()["db_decisions"]
            for _ in range(20):
                assert await outcome(adm, conn, project["public_key"]) == "RATE_LIMIT_EXCEEDED"
            assert adm.stats()["db_decisions"] == decisions  # no round trip
            assert adm.stats()["local_denied"] == 20
            # the other key of the same project learns it from its own first refusal
            assert await outcome(adm, conn, project["server_key"]) == "RATE_LIMIT_EXCEEDED"
            # a raised limit takes effect within the 1-second cap, without any notification
            with connect(pg_url) as pconn:
                set_limits(pconn, project["id"], rate_limit_per_minute=5)
            await asyncio.sleep(1.1)
            assert await outcome(adm, conn, project["public_key"]) == "admitted"

    run(scenario())


def test_after_the_cap_one_probe_asks_the_database_for_everyone(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=1)
    offset = [0.0]
    adm = Admitter(
        Settings(database_url=pg_url, rate_limit_window_s=LONG_WINDOW_S),
        clock=lambda: time.monotonic() + offset[0],
    )
    fresh_window(db, LONG_WINDOW_S, 60)
    key = project["public_key"]

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            await adm.admit(conn, key, 1)
            assert await outcome(adm, conn, key) == "RATE_LIMIT_EXCEEDED"  # database
            with pytest.raises(GatewayError):
                adm.check_local(key)  # local
            offset[0] += 1.5  # past the one-second cap, long before the window's reset
            probe = adm.check_local(key)  # this request goes to the database...
            for _ in range(5):
                with pytest.raises(GatewayError):  # ...the others wait for its answer
                    adm.check_local(key)
            decisions = adm.stats()["db_decisions"]
            assert await outcome_with_hash(adm, conn, key, probe) == "RATE_LIMIT_EXCEEDED"
            assert adm.stats()["db_decisions"] == decisions + 1
            with pytest.raises(GatewayError):  # renewed by the probe's answer
                adm.check_local(key)
            # the limit is raised: the next probe is admitted and drops the local deny
            with connect(pg_url) as pconn:
                set_limits(pconn, project["id"], rate_limit_per_minute=3)
            offset[0] += 1.5
            probe = adm.check_local(key)
            assert await outcome_with_hash(adm, conn, key, probe) == "admitted"
            assert adm.stats()["local_deny_entries"] == 0
            assert await outcome(adm, conn, key) == "admitted"

    run(scenario())


async def outcome_with_hash(
    adm: Admitter, conn: AsyncConnection[Any], key: str, key_hash: str
) -> str:
    try:
        await adm.admit(conn, key, 1, key_hash=key_hash)
        return "admitted"
    except GatewayError as exc:
        return exc.code


def test_used_up_daily_quota_is_refused_locally(pg_url: str, db: Any, make_project: Any) -> None:
    project = make_project(rate_limit_per_minute=1000, requests_per_day=2)
    adm = admitter(pg_url, invalidation_live=lambda: True)
    fresh_window(db, LONG_WINDOW_S, 60)
    key = project["public_key"]

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            await adm.admit(conn, key, 1)
            await adm.admit(conn, key, 1)
            with pytest.raises(GatewayError) as first:
                await adm.admit(conn, key, 1)  # from the database
            decisions = adm.stats()["db_decisions"]
            for _ in range(5):
                with pytest.raises(GatewayError) as local:
                    await adm.admit(conn, key, 1)
                assert local.value.code == "REQUEST_QUOTA_EXCEEDED"
                assert local.value.to_error() == first.value.to_error()
                for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
                    assert local.value.headers[name] == first.value.headers[name]
                assert int(local.value.headers["Retry-After"]) >= 1
            assert adm.stats()["db_decisions"] == decisions
            assert adm.stats()["local_denied"] == 5
            with connect(pg_url) as pconn:
                set_limits(pconn, project["id"], requests_per_day=3)
            adm.forget_project(project["id"])
            admitted = await adm.admit(conn, key, 1)
            assert admitted.quota_used == 3 and admitted.quota_limit == 3

    run(scenario())
    row = counter_row(db, project["id"])
    assert row is not None and row["day_used"] == 3


def test_local_quota_deny_headers_follow_the_rate_window(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=10, requests_per_day=1)
    offset = [0.0]
    window_s = 60
    adm = Admitter(
        Settings(database_url=pg_url, rate_limit_window_s=window_s),
        invalidation_live=lambda: True,
        clock=lambda: time.monotonic() + offset[0],
    )
    seconds_to_midnight = 86400 - db_epoch(db) % 86400
    if seconds_to_midnight < 300:
        pytest.skip("too close to UTC midnight")
    fresh_window(db, window_s, 20)
    key = project["public_key"]

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            await adm.admit(conn, key, 1)
            with pytest.raises(GatewayError) as first:
                await adm.admit(conn, key, 1)
            assert first.value.headers["X-RateLimit-Remaining"] == "9"
            reset = int(first.value.headers["X-RateLimit-Reset"])
            offset[0] += 2 * window_s + 1  # two windows later (still the same UTC day)
            with pytest.raises(GatewayError) as later:
                adm.check_local(key)
            h = later.value.headers
            assert later.value.code == "REQUEST_QUOTA_EXCEEDED"
            assert h["X-RateLimit-Remaining"] == "10"  # nothing was admitted since
            assert int(h["X-RateLimit-Reset"]) == reset + 2 * window_s
            assert int(h["Retry-After"]) >= int(h["RateLimit"].rsplit("t=", 1)[1])

    run(scenario())


def test_local_deny_lasts_until_reset_when_invalidation_is_live_and_forget_drops_it(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=2)
    adm = admitter(pg_url, invalidation_live=lambda: True)
    fresh_window(db, LONG_WINDOW_S, 60)

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            await adm.admit(conn, project["public_key"], 1)
            await adm.admit(conn, project["public_key"], 1)
            assert await outcome(adm, conn, project["public_key"]) == "RATE_LIMIT_EXCEEDED"
            with connect(pg_url) as pconn:
                set_limits(pconn, project["id"], rate_limit_per_minute=3)
            await asyncio.sleep(1.1)
            # still denied locally: nothing told this instance
            assert await outcome(adm, conn, project["public_key"]) == "RATE_LIMIT_EXCEEDED"
            assert adm.stats()["local_denied"] == 1
            adm.forget_project(project["id"])  # what the metadata listener does on NOTIFY
            assert await outcome(adm, conn, project["public_key"]) == "admitted"

    run(scenario())


def test_local_deny_never_admits_and_expires_at_the_window_end(
    pg_url: str, db: Any, make_project: Any
) -> None:
    window_s = 2
    project = make_project(rate_limit_per_minute=2)
    adm = admitter(pg_url, rate_limit_window_s=window_s, invalidation_live=lambda: True)
    wait_for_window_position(db, window_s, 0.05, 0.5)

    async def scenario() -> Counter[str]:
        seen: Counter[str] = Counter()
        async with await aconnect(pg_url) as conn:
            deadline = time.monotonic() + 3 * window_s
            while time.monotonic() < deadline:
                try:
                    a = await adm.admit(conn, project["public_key"], 1)
                    seen[f"admitted@{a.rate_reset_epoch}"] += 1
                except GatewayError as exc:
                    assert exc.code == "RATE_LIMIT_EXCEEDED"
                    seen["denied"] += 1
                await asyncio.sleep(0.01)
        return seen

    seen = run(scenario())
    print(seen, adm.stats())
    admitted = {k: v for k, v in seen.items() if k.startswith("admitted@")}
    assert len(admitted) >= 2  # the local deny ended with each window
    assert all(v == 2 for v in list(admitted.values())[:-1])  # full windows: exactly 2
    assert all(v <= 2 for v in admitted.values())
    assert adm.stats()["local_denied"] > adm.stats()["db_rate_limited"]


# --- settings variants ------------------------------------------------------------------


def test_key_lookup_only_when_admission_is_disabled(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=1, requests_per_day=1)
    adm = admitter(pg_url, admission_enabled=False)

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            for _ in range(3):
                a = await adm.admit(conn, project["server_key"], 1)
                assert a.project_id == project["id"] and a.principal.key_type == "server"
                assert admission_headers(a) == {}
            assert await outcome(adm, conn, "sheen_sk_nope") == "INVALID_API_KEY"
            with connect(pg_url) as pconn:
                revoke_key(pconn, project["server_key_id"])
            assert await outcome(adm, conn, project["server_key"]) == "REVOKED_API_KEY"

    run(scenario())
    assert counter_row(db, project["id"]) is None


def test_transaction_pooler_mode_runs_unprepared(pg_url: str, make_project: Any) -> None:
    project = make_project()
    adm = admitter(pg_url, db_pooler="transaction")
    assert adm.prepare is False

    async def scenario() -> None:
        async with await AsyncConnection.connect(
            pg_url, autocommit=True, prepare_threshold=None
        ) as conn:
            for _ in range(3):
                await adm.admit(conn, project["server_key"], 1)
            cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
            assert await cur.fetchone() == (0,)

    run(scenario())


def test_prepared_by_default(pg_url: str, make_project: Any) -> None:
    project = make_project()
    adm = admitter(pg_url)

    async def scenario() -> None:
        async with await aconnect(pg_url) as conn:
            for _ in range(2):
                await adm.admit(conn, project["server_key"], 1)
            cur = await conn.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                ["%gateway.admit%"],
            )
            assert await cur.fetchone() == (1,)

    run(scenario())
