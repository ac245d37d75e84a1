"""Bounded answers (issue 20, table row 5): GATEWAY_MAX_RESPONSE_BYTES, a batch counted
as a whole, enforced inside the statement so the rows never reach the gateway.

Before: ``/batch`` of 20 x ``limit 1000`` over a 4 MB table (a 1.6 KB request) answered
77 MB and the instance's memory went 102 -> 424 MB. Now the batch is a 400
``RESPONSE_TOO_LARGE`` and the instance's peak RSS (VmHWM of the real ``gateway serve``
process) grows by less than ``RSS_GROWTH_BOUND`` over repeated attacks; the bound and
its reasoning are in docs/query-api.md "Bounded answers".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.support.tables import todos

TITLE_CHARS = 4000
ROWS = 1000  # ~4 MB of titles
RSS_GROWTH_BOUND = 64 * 1024 * 1024


def _vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _fill(pg_url: str, project: dict[str, Any], rows: int, chars: int) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} (title)"
                " SELECT lpad(g::text, %s, 'x') FROM generate_series(1, %s) g"
            ).format(t=todos(project)),
            [chars, rows],
        )


def _client(url: str, project: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=url + "/v1/inhouse/db",
        headers={"Authorization": f"Bearer {project['server_key']}"},
        timeout=60,
    )


def _select(limit: int, offset: int = 0) -> dict[str, Any]:
    return {
        "operation": "select",
        "table": "todos",
        "columns": ["id", "title"],
        "sorts": [{"column": "id"}],
        "limit": limit,
        "offset": offset,
    }


def test_the_worst_batch_is_refused_and_the_instance_memory_stays_bounded(
    make_project: Callable[..., dict[str, Any]], gateway_cluster: Any, pg_url: str
) -> None:
    project = make_project()
    _fill(pg_url, project, ROWS, TITLE_CHARS)
    cluster = gateway_cluster(1)
    pid = cluster.instances[0].process.pid
    client = _client(cluster.urls[0], project)
    # warm up (imports, caches, pool) so the baseline is the instance at work
    assert client.post("/query", json={"query": _select(10)}).status_code == 200
    baseline_kib = _vm_kib(pid, "VmHWM")
    batch = {"queries": [_select(1000)] * 20}
    for _ in range(5):
        response = client.post("/batch", json=batch)
        assert response.status_code == 400, response.text[:300]
        error = response.json()["error"]
        assert error["code"] == "RESPONSE_TOO_LARGE"
        assert "limit" in error["message"] and "offset" in error["message"]
        assert error["details"]["maxResponseBytes"] == 4 * 1024 * 1024
        assert error["details"]["index"] == 1  # the first 4 MB fit, the second does not
    growth = (_vm_kib(pid, "VmHWM") - baseline_kib) * 1024
    print(f"VmHWM {baseline_kib} KiB -> {_vm_kib(pid, 'VmHWM')} KiB")
    assert growth < RSS_GROWTH_BOUND, f"peak RSS grew {growth / 2**20:.1f} MiB"
    assert cluster.instances[0].alive()
    # paging through the same rows works
    page = client.post("/query", json={"query": _select(500, 500)})
    assert page.status_code == 200 and len(page.json()["data"]) == 500


@pytest.fixture
def small_limit(
    make_project: Callable[..., dict[str, Any]], gateway_cluster: Any, pg_url: str
) -> tuple[dict[str, Any], httpx.Client]:
    """40 rows of ~1 KB behind a gateway that answers at most 20,000 bytes of rows."""
    project = make_project()
    _fill(pg_url, project, 40, 1000)
    cluster = gateway_cluster(1, env={"GATEWAY_MAX_RESPONSE_BYTES": "20000"})
    return project, _client(cluster.urls[0], project)


def test_answers_within_the_limit_are_exact_and_a_batch_counts_as_a_whole(
    small_limit: tuple[dict[str, Any], httpx.Client], pg_url: str
) -> None:
    project, client = small_limit
    with psycopg.connect(pg_url) as conn:
        expected = conn.execute(
            sql.SQL("SELECT id, title FROM {t} ORDER BY id LIMIT 15").format(t=todos(project))
        ).fetchall()
    under = client.post("/query", json={"query": _select(15)})
    assert under.status_code == 200, under.text[:300]
    assert [(r["id"], r["title"]) for r in under.json()["data"]] == expected
    assert under.json()["count"] == 15

    over = client.post("/query", json={"query": _select(25)})
    assert over.status_code == 400
    assert over.json()["error"]["code"] == "RESPONSE_TOO_LARGE"
    assert "index" not in over.json()["error"]["details"]

    # each fits alone, not together
    both = client.post("/batch", json={"queries": [_select(15), _select(15, 15)]})
    assert both.status_code == 400, both.text[:300]
    assert both.json()["error"]["code"] == "RESPONSE_TOO_LARGE"
    assert both.json()["error"]["details"]["index"] == 1
    # an empty answer and a small batch are unaffected
    small = client.post("/batch", json={"queries": [_select(5), _select(0), _select(5, 5)]})
    assert small.status_code == 200, small.text[:300]
    assert [r["count"] for r in small.json()["data"]] == [5, 0, 5]


def test_a_mutations_returning_rows_are_bounded_too_and_nothing_is_changed(
    small_limit: tuple[dict[str, Any], httpx.Client], pg_url: str
) -> None:
    project, client = small_limit
    update = {
        "operation": "update",
        "table": "todos",
        "set": {"done": True},
        "filters": [{"column": "id", "op": "gt", "value": 0}],
        "returning": ["id", "title"],
    }
    refused = client.post("/query", json={"query": update})
    assert refused.status_code == 400, refused.text[:300]
    assert refused.json()["error"]["code"] == "RESPONSE_TOO_LARGE"
    with psycopg.connect(pg_url) as conn:
        changed = conn.execute(
            sql.SQL("SELECT count(*) FROM {t} WHERE done").format(t=todos(project))
        ).fetchone()
    assert changed == (0,)  # the transaction was rolled back
    # bounded by maxRows as well: the guard's parameters keep their order
    small = client.post("/query", json={"query": {**update, "returning": ["id"], "maxRows": 100}})
    assert small.status_code == 200, small.text[:300]
    assert small.json()["count"] == 40
