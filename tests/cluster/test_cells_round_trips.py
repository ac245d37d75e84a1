"""A warm key costs no extra round trip: an admitted select of a project on a cell is two
round trips, both on that cell's database, and none on the control database.

Home (the control database) and the cell are each reached through their own counting
proxy; background traffic (request-log and bandwidth flushes, maintenance, cron ticks,
the listeners' self-check) is moved out of the way as in the single-database test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from tests.cluster.test_admission_cluster import QUIET_ENV, RoundTripProxy, one_request
from tests.support.cells import make_cell_project, register_cell, remove_cell, unique_cell_name
from tests.support.harness import GatewayCluster
from tests.support.polling import wait_until


def _proxied(url: str) -> tuple[RoundTripProxy, str]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    proxy = RoundTripProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    port = proxy.start()
    user = quote(str(info.get("user", "postgres")), safe="")
    password = info.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    return proxy, f"postgresql://{auth}@127.0.0.1:{port}/{info['dbname']}"


def test_a_warm_key_on_a_cell_costs_two_round_trips_on_its_cell_and_none_on_control(
    pg_url: str, cell_databases: Any, tmp_path: Path
) -> None:
    (cell_url,) = cell_databases(1)
    home_proxy, home_via = _proxied(pg_url)
    cell_proxy, cell_via = _proxied(cell_url)
    name = unique_cell_name("rt")
    register_cell(pg_url, name, cell_via)
    cluster = GatewayCluster(
        database_url=home_via, count=1, env=QUIET_ENV, log_dir=tmp_path, name="cellrt"
    )
    cluster.start()
    try:
        project = make_cell_project(pg_url, name, cell_url)
        gw = cluster.urls[0]
        # the cell serves once its LISTEN connection is up (opened in the background; 20 s
        # is a margin for a loaded 2-core machine)
        wait_until(
            lambda: one_request(gw, project["server_key"]).status == 200,
            timeout=20,
            message="the cell serves",
        )
        for _ in range(10):  # warm up: the route, prepared statements, metadata cache
            assert one_request(gw, project["server_key"]).status == 200
        counted = []
        for _ in range(5):
            # settle before and after (see _turns in test_admission_cluster.py)
            time.sleep(0.2)
            home_before, cell_before = home_proxy.turns, cell_proxy.turns
            reply = one_request(gw, project["server_key"])
            time.sleep(0.2)
            assert reply.status == 200
            counted.append((home_proxy.turns - home_before, cell_proxy.turns - cell_before))
        print(f"round trips (control, cell) per warm select on a cell: {counted}")
        assert sum(home for home, _ in counted) == 0, counted
        # summed: one request's last message may be counted with the next on a loaded machine
        assert sum(cell for _, cell in counted) == 2 * len(counted), counted
    finally:
        cluster.stop()
        remove_cell(pg_url, name)
        home_proxy.stop()
        cell_proxy.stop()
