"""Requests waiting for their project's share of the pool ride along in the coalesced
admission statements (gateway/db/share.py ``Ride``, gateway/admission/coalescer.py
``Passenger``), against a real PostgreSQL: each is counted exactly once, in the
statement of a request that holds a slot; the share still bounds the project's
connections; a ride refused by admission is answered at once, without a slot."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.admission.decision import Admission
from gateway.db.pool import create_pool
from gateway.query.pipeline import Outcome, Pipeline
from gateway.settings import Settings
from tests.support.admission import LONG_WINDOW_S, counter_row, fresh_window, run

LIMIT = 10
REQUESTS = 16


def _settings(pg_url: str) -> Settings:
    return Settings(
        database_url=pg_url,
        pool_max=4,
        pool_min=4,
        pool_max_per_project=1,
        rate_limit_window_s=LONG_WINDOW_S,
        admission_statements_max=1,
        admission_timeout_ms=10_000,
    )


async def _burst(pg_url: str, key: str) -> tuple[list[Outcome], int, dict[str, int]]:
    settings = _settings(pg_url)
    pool = create_pool(settings)
    await pool.open(wait=True, timeout=30)
    try:
        pipeline = Pipeline(settings, pool)
        running = peak = 0

        async def work(conn: Any, admission: Admission, out: Outcome) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)  # holds the slot: the others wait, and ride
            running -= 1
            out.body = b"ok"

        # the key's project is learnt first (a key not seen yet is admitted alone)
        first = await pipeline.admitted(key, cost=1, work=work)
        assert first.status == 200
        outcomes = await asyncio.gather(
            *(pipeline.admitted(key, cost=1, work=work) for _ in range(REQUESTS))
        )
        return [first, *outcomes], peak, pipeline.admitter.stats()
    finally:
        await pool.close()


def test_waiting_requests_are_counted_once_in_the_slot_holders_statements(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=LIMIT)
    fresh_window(db, LONG_WINDOW_S, 60)
    outcomes, peak, stats = run(_burst(pg_url, project["server_key"]))
    print("statuses:", [o.status for o in outcomes], stats)
    statuses = [o.status for o in outcomes]
    # exactly the limit admitted, in all; the rest refused by admission, never by the share
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == len(outcomes) - LIMIT
    assert all(o.body == b"ok" for o in outcomes if o.status == 200)
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == LIMIT and row["day_used"] == LIMIT
    # they rode: fewer statements than requests, and some admissions were passengers
    assert stats["passengers"] > 0
    assert stats["statements"] < len(outcomes)
    # the share still bounds the project's connections: one slot, one query at a time
    assert peak == 1
