"""Observability end to end: real gateway processes, real traffic, a real PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import psycopg

from tests.support.harness import LocalServerControl
from tests.support.observability import FAMILIES, parse_samples, rows_for, wait_rows
from tests.support.polling import wait_until

BASE = "/v1/inhouse/db"


def post(url: str, key: str, query: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        url + BASE + "/query",
        json={"query": query},
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=30,
    )


def test_graceful_shutdown_logs_exactly_every_keyed_request(
    pg_url: str, make_project, gateway_cluster
) -> None:
    project = make_project()
    cluster = gateway_cluster(
        1,
        env={
            "GATEWAY_LOG_FLUSH_MS": "600000",  # nothing is written before the shutdown
            "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32,10.0.0.0/8",
        },
    )
    instance = cluster.instances[0]
    url, key = instance.url, project["server_key"]
    insert = post(url, key, {"operation": "insert", "table": "todos", "data": [{"title": "a"}] * 3})
    assert insert.status_code == 201 or insert.status_code == 200, insert.text

    def one(i: int) -> httpx.Response:
        if i % 10 == 0:
            return post(url, key, {"operation": "select", "table": "nope"})
        headers = {"X-Forwarded-For": "203.0.113.7, 10.0.0.1"} if i % 2 else {}
        return post(url, key, {"operation": "select", "table": "todos"}, **headers)

    n = 400
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(n)))
    statuses = Counter(r.status_code for r in responses)
    print("statuses:", dict(statuses))
    # requests whose key never validated are not logged
    for _ in range(5):
        assert post(url, "sheen_sk_not_a_key", {"operation": "select", "table": "x"}).is_error
    assert rows_for(pg_url, instance.instance_id) == []  # all still buffered

    started = time.perf_counter()
    instance.terminate()
    elapsed = time.perf_counter() - started
    print(f"graceful shutdown with {n + 1} buffered rows took {elapsed:.2f} s")
    rows = rows_for(pg_url, instance.instance_id)
    assert len(rows) == n + 1  # exactly: the insert and the n queries

    by_request = {r["request_id"]: r for r in rows}
    sample = responses[1]
    row = by_request[sample.headers["X-Request-Id"]]
    assert row["method"] == "SELECT" and row["path"] == "/db/todos"
    assert row["table_name"] == "todos" and row["status_code"] == 200
    assert row["response_size_bytes"] == len(sample.content) and row["row_count"] == 3
    assert str(row["project_id"]) == project["id"]
    assert str(row["api_key_id"]) == project["server_key_id"]
    assert str(row["client_ip"]) == "203.0.113.7"  # 127.0.0.1 and 10.0.0.1: trusted proxies
    assert row["user_agent"].startswith("python-httpx")
    assert row["duration_ms"] > 0 and row["error_code"] is None
    direct = by_request[responses[2].headers["X-Request-Id"]]
    assert str(direct["client_ip"]) == "127.0.0.1"
    failed = by_request[responses[10].headers["X-Request-Id"]]
    assert failed["status_code"] == responses[10].status_code
    assert failed["error_code"] == responses[10].json()["error"]["code"]
    assert failed["path"] == "/db/nope"
    assert Counter(r["status_code"] for r in rows) == statuses + Counter({insert.status_code: 1})


def test_every_metric_family_after_real_traffic(pg_url: str, make_project, gateway_cluster) -> None:
    project = make_project()
    cluster = gateway_cluster(1, env={"GATEWAY_MAINTENANCE_INTERVAL_S": "0.5"})
    instance = cluster.instances[0]
    url, key = instance.url, project["public_key"]
    for _ in range(20):
        assert post(url, key, {"operation": "select", "table": "todos"}).status_code == 200
    assert post(url, key, {"operation": "select", "table": "nope"}).status_code == 404
    assert post(url, "sheen_pk_nope", {"operation": "select", "table": "todos"}).is_error
    httpx.get(url + BASE + "/schema", headers={"Authorization": f"Bearer {key}"})
    last: list[str] = []

    def sampled_and_flushed() -> bool:
        last[:] = [httpx.get(url + "/metrics").text]
        return (
            "gateway_db_connections{" in last[0]
            and parse_samples(last[0]).get("gateway_request_log_written_rows_total", 0) >= 22
        )

    # the log flushes every 250 ms, the leader samples on its first tick
    wait_until(sampled_and_flushed, timeout=30, interval=0.2, message=lambda: last[0])
    text = last[0]
    samples = parse_samples(text)
    types = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    missing = [f for f in FAMILIES if f not in types]
    assert not missing, missing
    route = BASE + "/query"
    assert samples[f'gateway_requests_total{{route="{route}",status="200"}}'] == 20
    assert samples[f'gateway_requests_total{{route="{route}",status="404"}}'] == 1
    assert samples[f'gateway_request_duration_seconds_count{{route="{route}"}}'] >= 22
    assert samples['gateway_admission_decisions_total{outcome="admitted"}'] == 22
    assert samples['gateway_admission_decisions_total{outcome="invalid_key"}'] == 1
    assert samples["gateway_pool_size"] >= 1 and samples["gateway_pool_max"] >= 1
    assert samples[f'gateway_db_connections{{gateway_instance="{instance.instance_id}"}}'] >= 1
    assert samples["gateway_request_log_written_rows_total"] == 22
    assert samples["gateway_request_log_buffer_rows"] >= 0
    assert samples["gateway_request_log_dropped_rows_total"] == 0
    assert samples["process_resident_memory_bytes"] > 0
    assert f'gateway_build_info{{instance_id="{instance.instance_id}"' in text
    print("families:", len(types), "rss MB:", round(samples["process_resident_memory_bytes"] / 1e6))


def test_readyz_503_while_the_database_is_down(
    pg_url: str, make_project, gateway_cluster, pg_control: LocalServerControl
) -> None:
    project = make_project()
    cluster = gateway_cluster(1, env={"GATEWAY_LOG_FLUSH_MS": "50"})
    instance = cluster.instances[0]
    url = instance.url
    assert post(url, project["public_key"], {"operation": "select", "table": "todos"}).is_success
    wait_rows(pg_url, instance.instance_id, 1)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the test server commits asynchronously
    pg_control.stop()
    try:
        started = time.perf_counter()
        down = httpx.get(url + "/readyz", timeout=10)
        elapsed = time.perf_counter() - started
        during = post(url, project["public_key"], {"operation": "select", "table": "todos"})
    finally:
        pg_control.start()
    print(f"/readyz answered {down.status_code} in {elapsed * 1000:.0f} ms while down")
    assert down.status_code == 503
    assert down.json()["checks"]["database"] == "down"
    assert down.json()["status"] == "unavailable"
    assert during.status_code == 503
    wait_until(
        lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200,
        timeout=30,
        interval=0.2,
        message="ready again",
    )
    assert post(url, project["public_key"], {"operation": "select", "table": "todos"}).is_success
    wait_rows(pg_url, instance.instance_id, 2)


def test_stats_shows_the_distribution_across_instances(
    pg_url: str, make_project, gateway_cluster
) -> None:
    project = make_project(name=f"dist-{uuid.uuid4().hex[:6]}")
    cluster = gateway_cluster(3, env={"GATEWAY_LOG_FLUSH_MS": "50"})
    plan = {0: 30, 1: 20, 2: 10}
    for index, count in plan.items():
        for _ in range(count):
            response = post(
                cluster.instances[index].url,
                project["public_key"],
                {"operation": "select", "table": "todos"},
            )
            assert response.status_code == 200
    for index, count in plan.items():
        wait_rows(pg_url, cluster.instances[index].instance_id, count)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "stats", "--since", "10m", "--json"],
        env={**os.environ, "DATABASE_URL": pg_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    per_instance = {i["instance_id"]: i["requests"] for i in report["instances"]}
    for index, count in plan.items():
        assert per_instance[cluster.instances[index].instance_id] == count
    top = {p["name"]: p["requests"] for p in report["top_projects_by_requests"]}
    assert top.get(project["name"]) == 60 or len(top) == 10
    text = subprocess.run(
        [sys.executable, "-m", "gateway", "stats", "--since", "10m"],
        env={**os.environ, "DATABASE_URL": pg_url},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    print(text)
    assert cluster.instances[0].instance_id in text


def test_access_log_json_lines_from_a_real_instance(gateway_cluster, make_project) -> None:
    project = make_project()
    cluster = gateway_cluster(1, env={"GATEWAY_ACCESS_LOG": "json"})
    instance = cluster.instances[0]
    query = httpx.post(
        instance.url + "/v1/inhouse/db/query",
        json={"query": {"operation": "select", "table": "missing"}},
        headers={"Authorization": f"Bearer {project['public_key']}"},
    )
    assert query.status_code == 404
    for _ in range(3):
        assert httpx.get(instance.url + "/healthz", headers={"user-agent": "probe/1"}).is_success
    assert httpx.get(instance.url + "/nowhere").status_code == 404
    metrics_text = httpx.get(instance.url + "/metrics").text
    assert instance.terminate() in (0, -15)  # uvicorn re-raises SIGTERM after a clean exit
    lines = [json.loads(x) for x in instance.output().splitlines() if x.startswith("{")]
    health = [x for x in lines if x["path"] == "/healthz"]
    assert len(health) == 3
    assert health[0]["status"] == 200 and health[0]["user_agent"] == "probe/1"
    assert health[0]["instance"] == instance.instance_id and health[0]["route"] == "/healthz"
    assert health[0]["duration_ms"] >= 0 and health[0]["bytes"] > 0
    assert [x["route"] for x in lines if x["path"] == "/nowhere"] == ["unmatched"]
    assert 'gateway_requests_total{route="/healthz",status="200"} 3.0' in metrics_text
    [line] = [x for x in lines if x["path"] == "/v1/inhouse/db/query"]
    assert line["project_id"] == project["id"] and line["error_code"] == "TABLE_NOT_FOUND"
    assert line["request_id"] == query.headers["X-Request-Id"] and line["status"] == 404
    assert line["operation"] == "SELECT" and line["table"] == "missing"
