"""Bandwidth, database size and plans across three real gateway processes.

* bandwidth: a 20 KB monthly limit, answers of ~2 KB spread over three instances → the
  refusals start after at most the documented overshoot (docs/quotas.md), and every byte
  sent is counted exactly once (after compression);
* database size: inserts until the schema is over its limit → the next insert is refused
  within one sample interval; selects and deletes still work, and a delete brings writes
  back after the next sample;
* a plan change applies on the next request on every instance.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import defaultdict
from typing import Any

import httpx
import pytest

from gateway.control.keys import create_key
from gateway.control.projects import connect, create_project, set_limits
from gateway.control.tables import create_table
from gateway.quotas import store
from tests.support.cli import cli_json
from tests.support.harness import ClusterStarter, GatewayCluster
from tests.support.polling import eventually

BASE = "/v1/inhouse/db"
FLUSH_S = 0.25  # GATEWAY_BANDWIDTH_FLUSH_MS
SAMPLE_S = 1.0  # GATEWAY_DB_SIZE_SAMPLE_S
TICK_S = 0.3  # GATEWAY_MAINTENANCE_INTERVAL_S
BLOBS: dict[str, Any] = {
    "name": "blobs",
    "columns": [
        {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
        {"name": "body", "type": "text"},
    ],
}
SELECT_ONE = {"query": {"operation": "select", "table": "blobs", "columns": ["body"], "limit": 1}}


@pytest.fixture(scope="module")
def cluster(module_cluster: ClusterStarter) -> GatewayCluster:
    return module_cluster(
        3,
        env={
            "GATEWAY_BANDWIDTH_FLUSH_MS": str(int(FLUSH_S * 1000)),
            "GATEWAY_DB_SIZE_SAMPLE_S": str(SAMPLE_S),
            "GATEWAY_MAINTENANCE_INTERVAL_S": str(TICK_S),
        },
        name="quota",
    )


def post(
    client: httpx.Client, url: str, key: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return client.post(
        url + BASE + "/query",
        json=body,
        headers={"Authorization": f"Bearer {key}", **headers},
    )


def code(response: httpx.Response) -> str | None:
    error = response.json().get("error")
    return error["code"] if error else None


def stored_bandwidth(db: Any, project_id: str) -> int:
    row = db.execute(
        "SELECT bandwidth_bytes FROM gateway.quota_usage WHERE project_id = %s", [project_id]
    ).fetchone()
    return int(row["bandwidth_bytes"]) if row else 0


def wait_for_bandwidth(db: Any, project_id: str, expected: int, timeout: float = 5.0) -> int:
    """The stored bytes once at least ``expected`` (the meters flush in batches), or as
    they are at the deadline: the caller's assertion says what was wrong."""
    eventually(lambda: stored_bandwidth(db, project_id) >= expected, timeout=timeout)
    return stored_bandwidth(db, project_id)


# --- bandwidth -------------------------------------------------------------------------------


def test_bandwidth_limit_over_three_instances_overshoots_at_most_the_bound(
    cluster: GatewayCluster, db: Any, pg_url: str, make_project: Any
) -> None:
    limit = 20 * 1024
    project = make_project(table=BLOBS)
    with connect(pg_url) as conn:
        set_limits(conn, project["id"], overrides={"bandwidth_bytes_monthly": limit})
    db.execute(
        f'INSERT INTO "{project["schema_name"]}".blobs (body) VALUES (%s)',
        [secrets.token_hex(1000)],  # an answer of ~2 KB
    )
    urls = cluster.urls
    interval = 0.05  # 20 requests/s in all: each instance answers one every 0.15 s
    log: list[tuple[int, float, int, httpx.Response]] = []
    with httpx.Client(timeout=30) as client:
        for i in range(400):
            started = time.monotonic()
            response = post(
                client,
                urls[i % 3],
                project["server_key"],
                SELECT_ONE,
                **{"Accept-Encoding": "identity"},
            )
            log.append((i % 3, time.monotonic(), response.status_code, response))
            if sum(1 for *_, s, _ in log[-10:] if s == 429) == 10:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    ok = [(inst, t, len(r.content)) for inst, t, s, r in log if s == 200]
    refused = [r for *_, s, r in log if s == 429]
    assert refused, "never refused"
    assert {code(r) for r in refused} == {"BANDWIDTH_QUOTA_EXCEEDED"}
    # once refused, refused for good (nothing is admitted after the first refusal)
    first_refusal = next(i for i, (*_, s, _) in enumerate(log) if s == 429)
    assert all(s == 429 for *_, s, _ in log[first_refusal:])
    answer = max(n for *_, n in ok)
    sent = sum(n for *_, n in ok)
    overshoot = sent - limit
    # The documented bound: every instance's bytes of one flush interval (plus the flush's
    # own time, here given FLUSH_S of slack) may be unseen when a request is admitted,
    # plus the one answer being decided.
    window = 2 * FLUSH_S
    bound = answer
    for instance in range(3):
        times = [(t, n) for inst, t, n in ok if inst == instance]
        bound += max(
            (sum(n for t2, n in times if t1 - window < t2 <= t1) for t1, _ in times), default=0
        )
    print(
        f"bandwidth: {len(ok)} answers of ~{answer} B admitted = {sent} B for a {limit} B "
        f"limit: overshoot {overshoot} B, bound {bound} B "
        f"({3} instances x {window} s x their rate + one answer)"
    )
    assert sent >= limit  # never refused early: refusals need stored bytes >= limit
    assert overshoot <= bound
    violation = refused[-1].json()["error"]["violations"][0]
    assert violation["type"] == "bandwidth" and violation["limit"] == limit
    assert violation["used"] >= limit
    assert violation["percentUsed"] == round(100 * violation["used"] / limit, 2)
    assert refused[-1].json()["error"]["details"]["violations"] == [violation]
    assert int(refused[-1].headers["Retry-After"]) >= 1
    # every byte sent is counted exactly once (refusals carry no project and count nothing)
    assert wait_for_bandwidth(db, project["id"], sent) == sent


def test_bandwidth_bound_holds_for_concurrent_unpaced_requests(
    cluster: GatewayCluster, db: Any, pg_url: str, make_project: Any
) -> None:
    """The same limit hammered by 9 concurrent clients over 3 instances, as fast as they
    can: the overshoot stays within the bound, now with the answers in flight added."""
    limit, concurrency = 20 * 1024, 9
    project = make_project(table=BLOBS)
    with connect(pg_url) as conn:
        set_limits(conn, project["id"], overrides={"bandwidth_bytes_monthly": limit})
    db.execute(
        f'INSERT INTO "{project["schema_name"]}".blobs (body) VALUES (%s)',
        [secrets.token_hex(1000)],
    )
    urls = cluster.urls

    async def hammer() -> list[tuple[int, float, int, int]]:
        done: list[tuple[int, float, int, int]] = []
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=30) as client:

            async def worker(w: int) -> None:
                i = w
                while not stop.is_set() and i < 2000:
                    url = urls[i % 3]
                    r = await client.post(
                        url + BASE + "/query",
                        json=SELECT_ONE,
                        headers={
                            "Authorization": f"Bearer {project['server_key']}",
                            "Accept-Encoding": "identity",
                        },
                    )
                    done.append((i % 3, time.monotonic(), r.status_code, len(r.content)))
                    if sum(1 for *_, s, _ in done[-30:] if s == 429) == 30:
                        stop.set()
                    i += concurrency

            await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return done

    done = asyncio.run(hammer())
    ok = [(inst, t, n) for inst, t, s, n in done if s == 200]
    assert any(s == 429 for *_, s, _ in done)
    answer = max(n for *_, n in ok)
    sent = sum(n for *_, n in ok)
    window = 2 * FLUSH_S
    bound = concurrency * answer
    for instance in range(3):
        times = [(t, n) for inst, t, n in ok if inst == instance]
        bound += max(
            (sum(n for t2, n in times if t1 - window < t2 <= t1) for t1, _ in times), default=0
        )
    print(
        f"bandwidth, {concurrency} concurrent: {len(ok)} answers = {sent} B for {limit} B: "
        f"overshoot {sent - limit} B, bound {bound} B"
    )
    assert limit <= sent <= limit + bound
    assert wait_for_bandwidth(db, project["id"], sent) == sent


def test_bandwidth_counts_the_compressed_bytes(
    cluster: GatewayCluster, db: Any, pg_url: str, make_project: Any
) -> None:
    project = make_project(table=BLOBS)
    db.execute(
        f'INSERT INTO "{project["schema_name"]}".blobs (body) '
        "SELECT repeat('abcdefgh', 500) FROM generate_series(1, 20)"
    )
    body = {"query": {"operation": "select", "table": "blobs", "columns": ["body"]}}
    with httpx.Client(timeout=30) as client:
        before = stored_bandwidth(db, project["id"])
        response = post(client, cluster.urls[1], project["server_key"], body)
        assert response.status_code == 200
        assert response.headers.get("content-encoding") == "gzip"
        on_the_wire = response.num_bytes_downloaded
        print(f"bandwidth: a {len(response.content)} B answer sent as {on_the_wire} B (gzip)")
        assert on_the_wire < len(response.content) / 10  # very compressible
    assert wait_for_bandwidth(db, project["id"], before + on_the_wire) == before + on_the_wire


# --- database size ---------------------------------------------------------------------------


def schema_size(db: Any, schema: str) -> int:
    row = db.execute(
        """
        SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS s
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relkind IN ('r', 'm')
        """,
        [schema],
    ).fetchone()
    return int(row["s"])


def test_database_limit_refuses_writes_keeps_reads_and_deletes_and_recovers(
    cluster: GatewayCluster, db: Any, pg_url: str, make_project: Any
) -> None:
    project = make_project(table=BLOBS)
    schema = project["schema_name"]
    limit = schema_size(db, schema) + 64 * 1024
    with connect(pg_url) as conn:
        set_limits(conn, project["id"], overrides={"db_size_bytes": limit})
    key, urls = project["server_key"], cluster.urls
    rows = [{"body": secrets.token_hex(1000)} for _ in range(8)]
    insert = {"query": {"operation": "insert", "table": "blobs", "data": rows, "returning": ["id"]}}
    with httpx.Client(timeout=30) as client:
        # fill it up: ~16 KB a request until the schema is over the limit
        i = 0
        while schema_size(db, schema) < limit:
            response = post(client, urls[i % 3], key, insert)
            assert response.status_code == 200, response.text
            i += 1
            assert i < 100
        over_at = time.monotonic()
        # the next inserts: refused within one sample interval (+ the leader's tick)
        while True:
            response = post(client, urls[i % 3], key, insert)
            i += 1
            if response.status_code == 429:
                break
            assert response.status_code == 200, response.text
            assert time.monotonic() - over_at < 10 * SAMPLE_S
            time.sleep(0.05)
        refused_after = time.monotonic() - over_at
        print(f"database: over the limit -> insert refused after {refused_after:.2f} s")
        assert refused_after <= SAMPLE_S + TICK_S + 1.0
        error = response.json()["error"]
        assert error["code"] == "DATABASE_QUOTA_EXCEEDED"
        violation = error["violations"][0]
        assert set(violation) == {"type", "used", "limit", "percentUsed"}
        assert violation["type"] == "database" and violation["limit"] == limit
        assert violation["used"] >= limit
        assert error["details"]["violations"] == error["violations"]
        # an update grows the table too: refused; selects and deletes still work
        update = {
            "query": {
                "operation": "update",
                "table": "blobs",
                "set": {"body": "x"},
                "filters": [{"column": "id", "op": "gt", "value": 0}],
                "maxRows": 1000,
            }
        }
        for url in urls:
            assert code(post(client, url, key, update)) == "DATABASE_QUOTA_EXCEEDED"
            assert code(post(client, url, key, insert)) == "DATABASE_QUOTA_EXCEEDED"
            assert post(client, url, key, SELECT_ONE).status_code == 200
        delete = {
            "query": {
                "operation": "delete",
                "table": "blobs",
                "filters": [{"column": "id", "op": "gt", "value": 0}],
            }
        }
        response = post(client, urls[0], key, delete)
        assert response.status_code == 200, response.text
        deleted_at = time.monotonic()
        # writes come back after the next sample (the leader VACUUMs an over-limit project
        # before measuring it), on every instance
        small = {"query": {"operation": "insert", "table": "blobs", "data": {"body": "ok"}}}
        while True:
            response = post(client, urls[1], key, small)
            if response.status_code == 200:
                break
            assert code(response) == "DATABASE_QUOTA_EXCEEDED"
            assert time.monotonic() - deleted_at < 10 * SAMPLE_S, "writes never came back"
            time.sleep(0.1)
        print(f"database: delete -> writes back after {time.monotonic() - deleted_at:.2f} s")
        for url in urls:
            assert post(client, url, key, small).status_code == 200


# --- plans ------------------------------------------------------------------------------------


def test_a_plan_change_applies_on_the_next_request_on_every_instance(
    cluster: GatewayCluster, db: Any, pg_url: str
) -> None:
    plan = f"t{uuid.uuid4().hex[:10]}"
    cli_json(pg_url, "plan", "set", plan, "--create", "--requests-per-day", "1000")
    with connect(pg_url) as conn:
        project = create_project(conn, f"q-{uuid.uuid4().hex[:10]}", tier=plan)
        from gateway.control import tabledef

        create_table(conn, project.id, tabledef.parse_table(BLOBS))
        key = create_key(conn, project.id, key_type="server")["key"]
    urls = cluster.urls
    with httpx.Client(timeout=30) as client:
        for url in urls:
            assert post(client, url, key, SELECT_ONE).status_code == 200
        # lowered: the very next request on every instance is refused (nothing is cached)
        cli_json(pg_url, "plan", "set", plan, "--requests-per-day", "3")
        for url in urls:
            response = post(client, url, key, SELECT_ONE)
            assert response.status_code == 429 and code(response) == "REQUEST_QUOTA_EXCEEDED"
            assert response.json()["error"]["violations"] == [
                {"type": "requests", "used": 3, "limit": 3, "percentUsed": 100.0}
            ]
        # raised: every instance holds a local deny until midnight; the plan's NOTIFY ("*")
        # drops it everywhere
        cli_json(pg_url, "plan", "set", plan, "--requests-per-day", "100")
        changed = time.monotonic()  # committed when the command returned
        statuses: dict[str, int] = defaultdict(int)
        for url in urls:
            while True:
                response = post(client, url, key, SELECT_ONE)
                if response.status_code == 200 or time.monotonic() - changed > 5:
                    break
                statuses[url] += 1
                time.sleep(0.01)
            assert response.status_code == 200, response.text
        elapsed = time.monotonic() - changed
        print(
            f"plan change reached every instance {elapsed:.3f} s after the CLI returned "
            f"(refusals meanwhile: {dict(statuses)})"
        )
        assert elapsed < 1.0
        # a bandwidth limit on the plan reaches every instance the same way
        assert wait_for_bandwidth(db, project.id, 1) >= 1  # flushed
        with connect(pg_url) as conn:
            store.set_plan(conn, plan, {"bandwidth_bytes_monthly": 1})
        for url in urls:
            assert code(post(client, url, key, SELECT_ONE)) == "BANDWIDTH_QUOTA_EXCEEDED"


def test_realtime_stream_bytes_count_as_bandwidth(
    cluster: GatewayCluster, db: Any, pg_url: str, make_project: Any
) -> None:
    """The events of a realtime stream are bytes sent: counted as they go, like answers."""
    project = make_project(table=BLOBS)
    key, urls = project["server_key"], cluster.urls
    body = secrets.token_hex(500)
    insert = {"query": {"operation": "insert", "table": "blobs", "data": {"body": body}}}
    received = 0
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "GET",
            urls[0] + BASE + "/realtime?table=blobs",
            headers={"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"},
        ) as stream,
    ):
        assert stream.status_code == 200
        answer = post(client, urls[1], key, insert, **{"Accept-Encoding": "identity"})
        assert answer.status_code == 200
        seen = b""
        for chunk in stream.iter_raw():
            received += len(chunk)
            seen += chunk
            if body.encode() in seen:
                break
    expected = received + len(answer.content)
    counted = wait_for_bandwidth(db, project["id"], expected)
    print(f"bandwidth: stream {received} B + answer {len(answer.content)} B, counted {counted} B")
    assert counted >= expected
