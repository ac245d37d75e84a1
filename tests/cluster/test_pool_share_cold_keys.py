"""The pool share (GATEWAY_POOL_MAX_PER_PROJECT, gateway/db/share.py) holds for requests
whose key the instance has not seen yet.

A key the instance knows takes its project's slot before checkout; a cold key learns its
project only from admission, so it takes the slot right after admission and, when none
is free, gives the connection back and waits (``Pipeline.admitted``). Here every request
of a burst uses a key of its own, all cold, against one real instance, and PostgreSQL
itself is watched (``pg_stat_activity``): the attacker project never has more statements
running at once than its share. The same burst with the share set to the whole pool does
run several at once — the control that shows the watch can see a breach.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from gateway.control.keys import create_key
from gateway.control.projects import connect
from tests.cluster.test_pool_share import seed_scan_table

POOL_MAX = 4
BURST = 12  # requests at once, each with a key of its own
ROWS = 60_000  # a scan of ~100 ms here: long enough to be seen running concurrently


def _fresh_keys(pg_url: str, project: dict[str, Any], n: int) -> list[str]:
    with connect(pg_url) as conn:
        return [create_key(conn, project["id"], key_type="server")["key"] for _ in range(n)]


class ActivityWatch:
    """Samples how many statements on the project's schema PostgreSQL runs at once."""

    def __init__(self, pg_url: str, schema: str) -> None:
        self.pg_url, self.schema = pg_url, schema
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                    " AND pid <> pg_backend_pid() AND query LIKE %s",
                    [f"%{self.schema}%"],
                ).fetchone()
                self.most = max(self.most, int(row[0]) if row else 0)
                self.samples += 1
                self._stop.wait(0.002)

    def __enter__(self) -> ActivityWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _burst(url: str, keys: list[str]) -> list[int]:
    """One slow allowed select per key, all at once: their status codes."""
    body = {
        "query": {
            "operation": "select",
            "table": "todos",
            "columns": ["id"],
            "filters": [{"column": "title", "op": "like", "value": "%zzz%"}],
        }
    }
    statuses: list[int] = []
    start = threading.Barrier(len(keys))

    def one(key: str) -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            r = client.post(
                url + "/v1/inhouse/db/query",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            )
            statuses.append(r.status_code)

    threads = [threading.Thread(target=one, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return statuses


@pytest.mark.parametrize(("share", "bound"), [(1, 1), (POOL_MAX, None)])
def test_the_share_holds_for_keys_the_instance_has_not_seen(
    share: int,
    bound: int | None,
    make_project: Callable[..., dict[str, Any]],
    gateway_cluster: Any,
    pg_url: str,
) -> None:
    attacker = make_project()
    seed_scan_table(pg_url, attacker, ROWS)
    cluster = gateway_cluster(
        1,
        env={"GATEWAY_POOL_MAX": str(POOL_MAX), "GATEWAY_POOL_MAX_PER_PROJECT": str(share)},
    )
    keys = _fresh_keys(pg_url, attacker, BURST)  # never used before: cold on the instance
    started = time.monotonic()
    with ActivityWatch(pg_url, attacker["schema_name"]) as watch:
        statuses = _burst(cluster.urls[0], keys)
    print(
        f"share {share}: at most {watch.most} statements of the project at once "
        f"({watch.samples} samples over {time.monotonic() - started:.1f} s); {statuses}"
    )
    # its requests wait their turn: 200, or 503 past the pool timeout; never a 5xx else
    assert set(statuses) <= {200, 503} and 200 in statuses
    if bound is not None:
        assert watch.most <= bound, f"{watch.most} statements at once with a share of {bound}"
    else:
        # the control: without a share the same cold burst runs several statements at
        # once, so the watch above would have seen a breach
        assert watch.most >= 2
