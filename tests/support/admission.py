"""The admission tests' shared pieces: an Admitter on the test database, and the clock.

Tests that count inside one rate-limit window first make sure the window has enough time
left, read from the database's clock (the one ``gateway.admit`` uses), so a count never
straddles a boundary by accident.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection

from gateway.admission.admitter import Admitter
from gateway.settings import Settings

T = TypeVar("T")
LONG_WINDOW_S = 3600  # an hour: a test almost never has to wait for room in the window


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def admitter(pg_url: str, **settings: Any) -> Admitter:
    settings.setdefault("rate_limit_window_s", LONG_WINDOW_S)
    settings.setdefault("admission_timeout_ms", 10_000)
    invalidation_live = settings.pop("invalidation_live", None)
    return Admitter(Settings(database_url=pg_url, **settings), invalidation_live=invalidation_live)


async def aconnect(pg_url: str) -> AsyncConnection[Any]:
    return await AsyncConnection.connect(pg_url, autocommit=True)


def db_epoch(db: psycopg.Connection[Any]) -> float:
    row = db.execute("SELECT extract(epoch FROM clock_timestamp())::float8 AS e").fetchone()
    return float(row["e"])


def wait_for_window_position(
    db: psycopg.Connection[Any], window_s: int, lo: float, hi: float
) -> float:
    """Sleep until the database clock is between lo and hi seconds into a window."""
    for _ in range(100):
        position = db_epoch(db) % window_s
        if lo <= position <= hi:
            return position
        time.sleep((lo - position) if position < lo else (window_s - position + lo))
    raise AssertionError("never reached the window position")


def fresh_window(db: psycopg.Connection[Any], window_s: int, need_s: float) -> None:
    """Make sure at least ``need_s`` seconds are left in the current window."""
    if window_s - db_epoch(db) % window_s < need_s:
        wait_for_window_position(db, window_s, 0.05, window_s - need_s)


def counter_row(db: psycopg.Connection[Any], project_id: str) -> dict[str, Any] | None:
    return db.execute(
        "SELECT * FROM gateway.admission_counters WHERE project_id = %s", [project_id]
    ).fetchone()
