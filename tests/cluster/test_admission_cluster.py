"""Admission across real gateway processes: the multi-instance proofs of the admission issue.

Every test sends real HTTP requests to several ``gateway serve`` processes sharing one
PostgreSQL. Tests that count inside one window first wait for a window with enough time
left on the database clock.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway.control.keys import revoke_key
from gateway.control.projects import connect, set_limits
from tests.support.admission import (
    LONG_WINDOW_S,
    counter_row,
    db_epoch,
    fresh_window,
    wait_for_window_position,
)
from tests.support.harness import ClusterStarter, GatewayCluster, wait_notifications_settled
from tests.support.observability import parse_samples, rows_for, wait_rows
from tests.support.owner_rows import NOTES_TABLE, make_session, make_user
from tests.support.polling import wait_until

BASE = "/v1/inhouse/db"
SELECT = {"query": {"operation": "select", "table": "todos", "limit": 1}}
# The counting tests need room left in the window (``fresh_window``): with the default
# minute they waited up to 25 s for the next one; with an hour they practically never
# wait. The limit's arithmetic does not depend on the window's length.
WINDOW_S = LONG_WINDOW_S
WINDOW_ENV = {"GATEWAY_RATE_LIMIT_WINDOW_S": str(WINDOW_S)}


@pytest.fixture(scope="module")
def cluster(module_cluster: ClusterStarter) -> GatewayCluster:
    """Three instances with the default settings but an hour-long (fixed) window."""
    return module_cluster(3, env=WINDOW_ENV, name="adm")


class Reply:
    def __init__(self, response: httpx.Response, url: str) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.body = response.json()
        self.url = url

    @property
    def code(self) -> str | None:
        error = self.body.get("error")
        return error["code"] if error else None


async def fire(
    urls: list[str],
    key: str,
    n: int,
    *,
    concurrency: int,
    body: dict[str, Any] = SELECT,
    path: str = "/query",
) -> list[Reply]:
    """n requests, request i to instance i % len(urls), ``concurrency`` in flight."""
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(i: int) -> Reply:
            url = urls[i % len(urls)]
            async with semaphore:
                response = await client.post(
                    url + BASE + path, json=body, headers={"Authorization": f"Bearer {key}"}
                )
            return Reply(response, url)

        return await asyncio.gather(*(one(i) for i in range(n)))


def fire_sync(urls: list[str], key: str, n: int, **kwargs: Any) -> list[Reply]:
    return asyncio.run(fire(urls, key, n, **kwargs))


def one_request(url: str, key: str, body: dict[str, Any] = SELECT) -> Reply:
    response = httpx.post(
        url + BASE + "/query", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    return Reply(response, url)


def statuses(replies: list[Reply]) -> Counter[int]:
    return Counter(r.status for r in replies)


# --- exactness ------------------------------------------------------------------------------


def test_rate_limit_exact_over_three_instances(
    cluster: GatewayCluster, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=50)
    fresh_window(db, WINDOW_S, 25)
    replies = fire_sync(cluster.urls, project["public_key"], 300, concurrency=60)
    per_instance = Counter((r.url, r.status) for r in replies)
    print("per instance:", dict(per_instance))
    assert statuses(replies) == {200: 50, 429: 250}
    assert {r.code for r in replies if r.status == 429} == {"RATE_LIMIT_EXCEEDED"}
    assert len({r.url for r in replies if r.status == 200}) >= 2  # spread over instances
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == 50 and row["day_used"] == 50


def test_daily_quota_exact_over_three_instances(
    cluster: GatewayCluster, db: Any, make_project: Any
) -> None:
    seconds_to_midnight = 86400 - db_epoch(db) % 86400
    if seconds_to_midnight < 300:
        time.sleep(seconds_to_midnight + 1)
    project = make_project(rate_limit_per_minute=100_000, requests_per_day=20)
    replies = fire_sync(cluster.urls, project["server_key"], 100, concurrency=50)
    assert statuses(replies) == {200: 20, 429: 80}
    refused = [r for r in replies if r.status == 429]
    assert {r.code for r in refused} == {"REQUEST_QUOTA_EXCEEDED"}
    violation = refused[0].body["error"]["details"]["violations"][0]
    assert violation == {"type": "requests", "used": 20, "limit": 20, "percentUsed": 100.0}
    assert refused[0].body["error"]["violations"] == [violation]
    assert int(refused[0].headers["Retry-After"]) >= 1
    row = counter_row(db, project["id"])
    assert row is not None and row["day_used"] == 20


def test_exact_with_coalescing_over_three_instances_of_300_concurrent(
    cluster: GatewayCluster, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=50)
    db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    fresh_window(db, WINDOW_S, 30)
    db.execute("SELECT pg_stat_statements_reset()")
    replies = fire_sync(cluster.urls, project["public_key"], 900, concurrency=900)
    counts = Counter((r.status, r.code) for r in replies)
    print("answers:", dict(counts))
    assert counts[(200, None)] == 50
    assert set(counts) <= {(200, None), (429, "RATE_LIMIT_EXCEEDED"), (503, "SERVICE_UNAVAILABLE")}
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == 50 and row["day_used"] == 50
    calls = {
        r["name"]: r["n"]
        for r in db.execute(
            "SELECT CASE WHEN query LIKE '%%gateway.admit_many(%%' THEN 'many' ELSE 'one' END"
            " AS name, sum(calls)::bigint AS n FROM pg_stat_statements"
            " WHERE query LIKE '%%gateway.admit%%' AND query NOT LIKE '%%pg_stat%%'"
            " GROUP BY 1"
        ).fetchall()
    }
    print("admission statements:", calls)
    assert calls.get("many", 0) >= 1  # requests were coalesced


# --- headers ----------------------------------------------------------------------------------


def _rate_limit(h: httpx.Headers) -> tuple[int, int]:
    """(r, t) from the RateLimit header."""
    parts = dict(p.split("=") for p in h["RateLimit"].split(";")[1:])
    return int(parts["r"]), int(parts["t"])


def test_headers_present_and_consistent_on_200_and_429(
    cluster: GatewayCluster, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=5)
    fresh_window(db, WINDOW_S, 20)
    key = project["public_key"]
    urls = cluster.urls
    replies = [one_request(urls[i % 3], key) for i in range(4)]
    # an error after admission carries the headers too (and counts as a request)
    missing = one_request(urls[1], key, {"query": {"operation": "select", "table": "nope"}})
    assert missing.status == 404 and missing.code == "TABLE_NOT_FOUND"
    replies.append(missing)
    resets = set()
    for i, reply in enumerate(replies):
        h = reply.headers
        assert h["X-RateLimit-Limit"] == "5"
        assert h["X-RateLimit-Remaining"] == str(4 - i)
        assert h["RateLimit-Policy"] == f'"minute";q=5;w={WINDOW_S}'
        r, t = _rate_limit(h)
        assert r == 4 - i
        reset = int(h["X-RateLimit-Reset"])
        assert abs((reset - time.time()) - t) <= 3
        resets.add(reset)
        assert "Retry-After" not in h
    assert replies[0].headers["X-Project-Id"] == project["id"]
    # the reset comes from the database clock: the same on every instance
    assert len(resets) == 1
    reset = resets.pop()
    assert reset % WINDOW_S == 0
    for i in range(6):  # each instance: first from the database, then its local deny
        reply = one_request(urls[i % 3], key)
        assert reply.status == 429 and reply.code == "RATE_LIMIT_EXCEEDED"
        h = reply.headers
        assert h["X-RateLimit-Limit"] == "5"
        assert h["X-RateLimit-Remaining"] == "0"
        assert h["X-RateLimit-Reset"] == str(reset)
        r, t = _rate_limit(h)
        assert r == 0
        assert int(h["Retry-After"]) >= max(1, t)
        assert abs((reset - time.time()) - int(h["Retry-After"])) <= 3
        assert "X-Request-Id" in h
    # no admission, no rate-limit headers
    bad = one_request(urls[0], "sheen_pk_not_a_key")
    assert bad.status == 401 and "X-RateLimit-Limit" not in bad.headers


# --- changes take effect everywhere -------------------------------------------------------------


def test_revoked_key_changed_limit_and_suspension_reach_every_instance(
    cluster: GatewayCluster, pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=1000)
    fresh_window(db, WINDOW_S, 20)
    urls = cluster.urls
    for url in urls:
        assert one_request(url, project["public_key"]).status == 200
    with connect(pg_url) as conn:
        revoke_key(conn, project["public_key_id"])
    for url in urls:
        reply = one_request(url, project["public_key"])
        assert (reply.status, reply.code) == (401, "REVOKED_API_KEY")

    # a lowered limit: the very next request on every instance
    used = counter_row(db, project["id"])["window_count"]
    with connect(pg_url) as conn:
        set_limits(conn, project["id"], rate_limit_per_minute=used)
    for url in urls:
        reply = one_request(url, project["server_key"])
        assert (reply.status, reply.code) == (429, "RATE_LIMIT_EXCEEDED")
        assert reply.headers["X-RateLimit-Limit"] == str(used)
    # a raised limit: every instance now holds a local deny for this key until the end of
    # the window; the NOTIFY of the change drops it (without a live listener it would be
    # re-checked after at most one second)
    with connect(pg_url) as conn:
        set_limits(conn, project["id"], rate_limit_per_minute=used + 10)
    changed = time.monotonic()
    for url in urls:
        while True:
            reply = one_request(url, project["server_key"])
            if reply.status == 200 or time.monotonic() - changed > 5:
                break
            time.sleep(0.01)
        assert reply.status == 200, reply.body
        assert reply.headers["X-RateLimit-Limit"] == str(used + 10)
    print(f"raised limit reached every instance after {time.monotonic() - changed:.3f} s")
    assert time.monotonic() - changed < 1.0

    with connect(pg_url) as conn:
        set_limits(conn, project["id"], status="suspended")
    for url in urls:
        reply = one_request(url, project["server_key"])
        assert (reply.status, reply.code) == (403, "PROJECT_SUSPENDED")


# --- the abusive client ---------------------------------------------------------------------------


def _admit_calls(db: Any) -> int:
    row = db.execute(
        "SELECT coalesce(sum(calls), 0)::bigint AS n FROM pg_stat_statements WHERE query LIKE %s",
        ["%gateway.admit(%"],
    ).fetchone()
    return int(row["n"])


def test_hot_project_does_not_starve_another(
    cluster: GatewayCluster, db: Any, make_project: Any
) -> None:
    limit = 20
    hot = make_project(rate_limit_per_minute=limit)
    calm = make_project(rate_limit_per_minute=100_000)
    db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    fresh_window(db, WINDOW_S, 25)
    db.execute("SELECT pg_stat_statements_reset()")
    urls = cluster.urls
    calm_replies: list[Reply] = []

    async def calm_client(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            i = 0
            while not stop.is_set() or i < 15:
                url = urls[i % 3]
                response = await client.post(
                    url + BASE + "/query",
                    json=SELECT,
                    headers={"Authorization": f"Bearer {calm['public_key']}"},
                )
                calm_replies.append(Reply(response, url))
                i += 1

    async def scenario() -> tuple[list[Reply], float]:
        stop = asyncio.Event()
        calm_task = asyncio.create_task(calm_client(stop))
        started = time.monotonic()
        hammered = await fire(urls, hot["public_key"], 20 * limit, concurrency=30)
        took = time.monotonic() - started
        stop.set()
        await calm_task
        return hammered, took

    hammered, took = asyncio.run(scenario())
    calls = _admit_calls(db)
    hot_calls = calls - len(calm_replies)
    print(
        f"hot: {len(hammered)} requests in {took:.1f} s -> {dict(statuses(hammered))}; "
        f"admission statements for it: {hot_calls} (limit {limit}); "
        f"calm: {len(calm_replies)} requests -> {dict(statuses(calm_replies))}"
    )
    assert statuses(hammered) == {200: limit, 429: 19 * limit}
    assert statuses(calm_replies) == {200: len(calm_replies)}
    # about `limit` statements per window: the admitted ones, the requests already in
    # flight when each instance learned "full", and one probe per instance per second
    bound = limit + 30 + 3 * 2 * (math.ceil(took) + 1)
    assert hot_calls <= bound, (hot_calls, bound)
    assert hot_calls < 20 * limit / 2


# --- sliding vs fixed across a window boundary ----------------------------------------------------


def _boundary_burst_http(urls: list[str], db: Any, key: str, window_s: int, limit: int) -> Any:
    for _ in range(5):
        wait_for_window_position(db, window_s, window_s - 1.3, window_s - 1.0)
        first = fire_sync(urls, key, limit, concurrency=limit)
        resets = {r.headers.get("X-RateLimit-Reset") for r in first}
        if statuses(first) != {200: limit} or len(resets) != 1:
            time.sleep(window_s)  # too slow: the burst crossed the boundary; start over
            continue
        boundary = int(resets.pop())
        wait = boundary + 0.05 - db_epoch(db)
        if wait < 0:
            time.sleep(window_s)
            continue
        time.sleep(wait)
        second = fire_sync(urls, key, limit, concurrency=limit)
        elapsed = (db_epoch(db) - boundary) / window_s
        return statuses(second)[200], elapsed, second
    pytest.skip("machine too slow to place a burst inside one window")


@pytest.mark.parametrize("algorithm", ["fixed", "sliding"])
def test_burst_across_a_window_boundary(
    gateway_cluster: Any, db: Any, make_project: Any, algorithm: str
) -> None:
    window_s, limit = 4, 10
    c = gateway_cluster(
        3,
        env={
            "GATEWAY_RATE_LIMIT_WINDOW_S": str(window_s),
            "GATEWAY_RATE_LIMIT_ALGORITHM": algorithm,
        },
    )
    project = make_project(rate_limit_per_minute=limit)
    admitted, elapsed, second = _boundary_burst_http(
        c.urls, db, project["server_key"], window_s, limit
    )
    print(f"{algorithm}: {limit} late in window N, then {admitted} of {limit} at {elapsed:.3f}")
    if algorithm == "fixed":
        assert admitted == limit  # 2x the limit within about a second: the known flaw
    else:
        # previous x (1 - elapsed) + current: only the previous window's decayed share
        assert admitted <= math.floor(limit * min(1.0, elapsed))
        refused = [r for r in second if r.status == 429]
        assert refused and all(int(r.headers["Retry-After"]) >= 1 for r in refused)


# --- round trips ----------------------------------------------------------------------------------


# a quiet instance for counting round trips: background traffic kept off the proxy
QUIET_ENV = {
    "GATEWAY_POOL_MAX": "1",
    "GATEWAY_POOL_MIN": "1",
    "GATEWAY_RATE_LIMIT_WINDOW_S": str(LONG_WINDOW_S),
    # keep background traffic (request-log flushes, maintenance) off the proxy
    # while counting: the log is flushed at shutdown
    "GATEWAY_LOG_FLUSH_MS": "600000",
    "GATEWAY_MAINTENANCE_INTERVAL_S": "3600",
    # quotas: the bandwidth meter's batched flush (one statement a second per
    # instance, never per request) is background traffic too
    "GATEWAY_BANDWIDTH_FLUSH_MS": "600000",
    # jobs: the cron tick's leader election (every second by default)
    "GATEWAY_JOBS_CRON_TICK_S": "3600",
    "GATEWAY_JOBS_CONCURRENCY": "0",
    # the listener's self-check (a NOTIFY and its echo every 30 s by default) goes
    # through the proxy too, and a slow run crosses 30 s
    "GATEWAY_LISTENER_PING_S": "3600",
}


class RoundTripProxy:
    """A TCP proxy in its own thread counting, per connection, how often the client speaks
    after the server has answered (one round trip each)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.turns = 0
        self.listen_port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> int:
        self._thread.start()
        assert self._ready.wait(10)
        return self.listen_port

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.listen_port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(self.host, self.port)
        server_spoke = [True]

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, client: bool) -> None:
            try:
                while data := await r.read(65536):
                    if client:
                        if server_spoke[0]:
                            self.turns += 1
                            server_spoke[0] = False
                    else:
                        server_spoke[0] = True
                    w.write(data)
                    await w.drain()
            finally:
                w.close()

        await asyncio.gather(pump(cr, sw, True), pump(sr, cw, False), return_exceptions=True)


def _turns(proxy: RoundTripProxy, action: Any) -> tuple[int, Any]:
    # settle before and after: on a loaded machine the previous request's last message can
    # reach the proxy a little after its HTTP answer, and would be counted for the next
    time.sleep(0.2)
    before = proxy.turns
    result = action()
    time.sleep(0.2)
    return proxy.turns - before, result


def test_an_admitted_select_costs_two_round_trips(
    pg_url: str, db: Any, make_project: Any, tmp_path: Path
) -> None:
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    proxy = RoundTripProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    port = proxy.start()
    url = psycopg.conninfo.make_conninfo(pg_url, host="127.0.0.1", port=port)
    c = GatewayCluster(
        database_url=url,
        count=1,
        env=QUIET_ENV,
        log_dir=tmp_path,
        name="rt",
    )
    c.start()
    try:
        project = make_project()
        tight = make_project(rate_limit_per_minute=1)
        fresh_window(db, LONG_WINDOW_S, 60)
        gw = c.urls[0]
        for _ in range(10):  # warm up: prepared statements, metadata cache
            assert one_request(gw, project["server_key"]).status == 200
        selects = [_turns(proxy, lambda: one_request(gw, project["server_key"])) for _ in range(5)]
        assert all(reply.status == 200 for _, reply in selects)
        select_turns = [turns for turns, _ in selects]
        # with a session on an owner table: the session is resolved inside the admission
        # statement and the row policies' settings ride in the query's pipeline (0008)
        owned = make_project(table=NOTES_TABLE)
        token = make_session(pg_url, owned["id"], make_user(pg_url, owned["id"]))
        notes = {"query": {"operation": "select", "table": "notes"}}

        def with_session() -> httpx.Response:
            return httpx.post(
                gw + BASE + "/query",
                json=notes,
                headers={"x-api-key": owned["public_key"], "Authorization": f"Bearer {token}"},
                timeout=30,
            )

        for _ in range(10):
            assert with_session().status_code == 200
        sessions = [_turns(proxy, with_session) for _ in range(5)]
        assert all(reply.status_code == 200 for _, reply in sessions)
        session_turns = [turns for turns, _ in sessions]
        ok_turns, _ = _turns(proxy, lambda: one_request(gw, tight["server_key"]))
        denied_turns, denied = _turns(proxy, lambda: one_request(gw, tight["server_key"]))
        assert denied.status == 429
        local_turns, local = _turns(proxy, lambda: one_request(gw, tight["server_key"]))
        assert local.status == 429
        invalid_turns, invalid = _turns(proxy, lambda: one_request(gw, "sheen_sk_nope"))
        assert invalid.status == 401
        print(
            f"round trips: admitted select {select_turns}, with a session {session_turns}, "
            f"rate-limited by the database "
            f"{denied_turns}, locally denied {local_turns}, invalid key {invalid_turns}"
        )
        assert denied_turns == 1  # the admission statement alone
        assert local_turns == 0
        assert invalid_turns == 1
        assert ok_turns >= 2  # a new project: its catalog is loaded once
        # admission + query (the catalog is cached). Summed over the five: on a loaded
        # machine one request's last message can reach the proxy after its HTTP answer and
        # be counted with the next ([3, 1, 2, 2, 2]); the total is exact either way
        assert sum(select_turns) == 2 * len(select_turns), select_turns
        # the session costs no round trip of its own
        assert sum(session_turns) == 2 * len(session_turns), session_turns
    finally:
        c.stop()
        proxy.stop()


# --- when the database can't decide ---------------------------------------------------------------


def test_held_counter_row_is_a_fast_503_through_http(
    gateway_cluster: Any, pg_url: str, make_project: Any
) -> None:
    c = gateway_cluster(1, env={"GATEWAY_ADMISSION_TIMEOUT_MS": "300"})
    project = make_project()
    gw = c.urls[0]
    assert one_request(gw, project["server_key"]).status == 200  # creates the counter row
    with psycopg.connect(pg_url) as holder:
        holder.execute(
            "SELECT 1 FROM gateway.admission_counters WHERE project_id = %s FOR UPDATE",
            [project["id"]],
        )
        started = time.monotonic()
        reply = one_request(gw, project["server_key"])
        took = time.monotonic() - started
        holder.rollback()
    print(f"503 after {took * 1000:.0f} ms (admission timeout 300 ms)")
    assert (reply.status, reply.code) == (503, "SERVICE_UNAVAILABLE")
    assert reply.headers["Retry-After"] == "1"
    assert took < 5.0
    assert one_request(gw, project["server_key"]).status == 200  # and it recovers


def test_database_down_is_a_fast_503_never_a_pass(
    gateway_cluster: Any, pg_control: Any, db: Any, make_project: Any
) -> None:
    c = gateway_cluster(1, env={"GATEWAY_ADMISSION_TIMEOUT_MS": "500"})
    project = make_project()
    gw = c.urls[0]
    assert one_request(gw, project["server_key"]).status == 200
    # the test server runs without durable commits: make the new project survive the crash
    db.execute("CHECKPOINT")
    pg_control.stop("immediate")
    try:
        for _ in range(3):
            started = time.monotonic()
            reply = one_request(gw, project["server_key"])
            took = time.monotonic() - started
            print(f"database down: {reply.status} {reply.code} after {took * 1000:.0f} ms")
            assert reply.status == 503 and reply.code == "SERVICE_UNAVAILABLE"
            assert reply.headers["Retry-After"] == "1"
            assert took < 8.0
    finally:
        pg_control.start()
    seen = []

    def recovered() -> bool:
        reply = one_request(gw, project["server_key"])
        seen.append((reply.status, reply.code))
        return reply.status == 200

    wait_until(
        recovered,
        timeout=30,
        interval=0.5,
        message=lambda: f"the gateway recovering after the database came back: {seen}",
    )


# --- observability of admission -------------------------------------------------------------------


def test_refusals_are_logged_for_their_project_and_local_denies_are_counted_apart(
    gateway_cluster: Any, pg_url: str, db: Any, make_project: Any
) -> None:
    c = gateway_cluster(1, env=WINDOW_ENV)
    instance = c.instances[0]
    project = make_project(rate_limit_per_minute=2)
    fresh_window(db, WINDOW_S, 20)
    wait_notifications_settled(instance.url)  # the new project's notifications
    replies = [one_request(instance.url, project["public_key"]) for _ in range(6)]
    assert [r.status for r in replies] == [200, 200, 429, 429, 429, 429]
    wait_rows(pg_url, instance.instance_id, 6)
    rows = rows_for(pg_url, instance.instance_id)
    assert [r["status_code"] for r in rows] == [200, 200, 429, 429, 429, 429]
    assert {str(r["project_id"]) for r in rows} == {project["id"]}
    assert {str(r["api_key_id"]) for r in rows} == {project["public_key_id"]}
    assert {r["error_code"] for r in rows[2:]} == {"RATE_LIMIT_EXCEEDED"}
    samples = parse_samples(httpx.get(instance.url + "/metrics").text)
    assert samples['gateway_admission_decisions_total{outcome="admitted"}'] == 2
    # 1 from the database and 3 local, unless the (debounced) NOTIFY of the new project's
    # keys arrived after the first refusal and dropped its local deny once more
    rate_limited = samples['gateway_admission_decisions_total{outcome="rate_limited"}']
    local = samples['gateway_admission_decisions_total{outcome="local_deny"}']
    assert rate_limited + local == 4 and rate_limited >= 1 and local >= 2


def test_bench_switch_keeps_key_validation_but_no_counters(
    gateway_cluster: Any, pg_url: str, db: Any, make_project: Any
) -> None:
    c = gateway_cluster(1, env={"GATEWAY_BENCH_DISABLE_ADMISSION": "true"})
    gw = c.urls[0]
    project = make_project(rate_limit_per_minute=1, requests_per_day=1)
    for _ in range(3):
        reply = one_request(gw, project["server_key"])
        assert reply.status == 200
        assert "X-RateLimit-Limit" not in reply.headers
    assert one_request(gw, "sheen_sk_nope").status == 401
    with connect(pg_url) as conn:
        revoke_key(conn, project["server_key_id"])
    assert one_request(gw, project["server_key"]).code == "REVOKED_API_KEY"
    assert counter_row(db, project["id"]) is None
