"""Blast radius: a cell whose database is down answers 503 for its own projects only.

The cell runs on its OWN embedded PostgreSQL server, stopped and started on purpose. While
it is down, the other cells' projects keep serving at their usual latency (p95 within 1.5x
of before; the check allows an extra 50 ms because a 2-core machine running the stopped
server's shutdown is noisy), its own projects answer 503 SERVICE_UNAVAILABLE well under
the pool timeout (the cell counts as down while its LISTEN connection is), and they
recover by themselves when it returns. An instance started while the cell is down starts
and serves the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.admin_client import SECRET, AdminClient
from tests.support.cells import (
    cell_server,
    make_cell_project,
    register_cell,
    remove_cell,
    unique_cell_name,
)
from tests.support.harness import LocalServerControl
from tests.support.polling import eventually

BASE = "/v1/inhouse/db"
SELECT = {"query": {"operation": "select", "table": "todos", "limit": 1}}
POOL_TIMEOUT_S = 2.0  # the default GATEWAY_POOL_TIMEOUT_S


@pytest.fixture
def down_cell(pg_url: str) -> Iterator[tuple[str, LocalServerControl]]:
    with cell_server() as server:
        name = unique_cell_name("x")
        register_cell(pg_url, name, server.url)
        try:
            yield name, server
        finally:
            server.ensure_running()
            remove_cell(pg_url, name)


def _timed(client: httpx.Client, url: str, key: str) -> tuple[int, float, str]:
    started = time.perf_counter()
    r = client.post(url + BASE + "/query", json=SELECT, headers={"Authorization": f"Bearer {key}"})
    code = r.json().get("error", {}) or {}
    return r.status_code, time.perf_counter() - started, (code or {}).get("code", "")


def _p95(client: httpx.Client, url: str, key: str, n: int = 60) -> float:
    times = []
    for _ in range(n):
        status, seconds, _ = _timed(client, url, key)
        assert status == 200
        times.append(seconds)
    return sorted(times)[int(0.95 * (n - 1))]


def test_a_stopped_cell_answers_503_fast_and_the_others_keep_their_latency(
    pg_url: str,
    down_cell: tuple[str, LocalServerControl],
    gateway_cluster: Any,
    make_project: Any,
) -> None:
    name, server = down_cell
    cluster = gateway_cluster(2, env={"GATEWAY_ADMIN_HMAC_SECRET": SECRET})
    home = make_project()
    remote = make_cell_project(pg_url, name, server.url)
    with httpx.Client(timeout=30) as client:
        for url in cluster.urls:
            assert _timed(client, url, remote["public_key"])[0] == 200
        before = _p95(client, cluster.urls[0], home["public_key"])
        server.stop("immediate")
        # every instance notices (its LISTEN connection to the cell drops)
        assert eventually(
            lambda: all(_timed(client, u, remote["public_key"])[0] == 503 for u in cluster.urls),
            timeout=10,
        )
        refused = [_timed(client, u, remote["public_key"]) for u in cluster.urls * 5]
        assert all(status == 503 and code == "SERVICE_UNAVAILABLE" for status, _, code in refused)
        slowest = max(seconds for _, seconds, _ in refused)
        assert slowest < POOL_TIMEOUT_S / 2, f"a refusal took {slowest:.3f} s"
        metrics = client.get(cluster.urls[0] + "/metrics").text
        assert f'gateway_cell_up{{cell="{name}"}} 0.0' in metrics
        assert 'gateway_cell_up{cell="home"} 1.0' in metrics
        errors = [
            line
            for line in metrics.splitlines()
            if line.startswith(f'gateway_cell_errors_total{{cell="{name}"}}')
        ]
        assert errors and float(errors[0].split()[-1]) >= 5
        # the admin API: listing every cell's projects can't include the stopped one: 503
        admin = AdminClient(cluster.urls[1])
        try:
            listing = admin.call("GET", "/projects")
            assert listing.status_code == 503, listing.text
            assert listing.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
            assert admin.ok("GET", f"/projects/{home['id']}")["cell"] == "home"
        finally:
            admin.close()
        after = _p95(client, cluster.urls[0], home["public_key"])
        print(
            f"home p95 before {before * 1000:.1f} ms, while the cell is down {after * 1000:.1f} ms"
        )
        assert after <= max(1.5 * before, before + 0.05)
        server.start()
        assert eventually(
            lambda: all(_timed(client, u, remote["public_key"])[0] == 200 for u in cluster.urls),
            timeout=30,
        )


def test_an_instance_started_while_a_cell_is_down_serves_the_others(
    pg_url: str,
    down_cell: tuple[str, LocalServerControl],
    gateway_cluster: Any,
    make_project: Any,
) -> None:
    name, server = down_cell
    remote = make_cell_project(pg_url, name, server.url)
    home = make_project()
    server.stop("immediate")
    cluster = gateway_cluster(1)  # waits for /readyz: the instance is ready without the cell
    url = cluster.urls[0]
    with httpx.Client(timeout=30) as client:
        assert _timed(client, url, home["public_key"])[0] == 200
        status, seconds, code = _timed(client, url, remote["public_key"])
        assert (status, code) == (503, "SERVICE_UNAVAILABLE") and seconds < POOL_TIMEOUT_S
        server.start()
        assert eventually(lambda: _timed(client, url, remote["public_key"])[0] == 200, timeout=30)
