"""Cells added and removed while the instances run (real processes): NOTIFY ``cells`` on
home's listener makes every instance start a runtime for a new cell (its projects are
served everywhere, no restart) and stop the runtime of a removed one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.support.cells import make_cell_project, register_cell, remove_cell, unique_cell_name
from tests.support.polling import eventually

SELECT = {"query": {"operation": "select", "table": "todos", "limit": 1}}


def _status(url: str, key: str) -> int:
    response = httpx.post(
        url + "/v1/inhouse/db/query",
        json=SELECT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return response.status_code


def _ready_cells(url: str) -> dict[str, str]:
    response = httpx.get(url + "/readyz", timeout=10)
    assert response.status_code == 200, response.text
    cells: dict[str, str] = response.json().get("cells") or {}
    return cells


def test_a_cell_added_while_running_is_served_and_a_removed_one_stopped(
    pg_url: str, cell_databases: Callable[[int], list[str]], gateway_cluster: Any
) -> None:
    cluster = gateway_cluster(2)
    (url,) = cell_databases(1)
    name = unique_cell_name("late")
    try:
        register_cell(pg_url, name, url)
        project = make_cell_project(pg_url, name, url)
        # the NOTIFY reaches each instance within its listener's delivery; the runtime
        # then opens (pool + LISTEN). 20 s is a margin for a loaded 2-core machine.
        assert eventually(
            lambda: all(_status(u, project["server_key"]) == 200 for u in cluster.urls),
            timeout=20,
        ), [_status(u, project["server_key"]) for u in cluster.urls]
        assert all(_ready_cells(u).get(name) == "up" for u in cluster.urls)
    finally:
        remove_cell(pg_url, name)
    assert eventually(lambda: all(name not in _ready_cells(u) for u in cluster.urls), timeout=20), [
        _ready_cells(u) for u in cluster.urls
    ]
