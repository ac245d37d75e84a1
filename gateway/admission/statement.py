"""The admission statement and its one bounded round trip.

``gateway.admit`` decides one request (with its session, if it has one);
``gateway.admit_many`` decides the coalescer's batch, one element per request, in array
order; ``gateway.lookup_key`` checks the key alone when admission counters are off. Each
is sent in ONE round trip bounded by ``GATEWAY_ADMISSION_TIMEOUT_MS``: a timeout, a
counter row held too long or a lost connection is a fast 503 with ``Retry-After: 1``,
never a hang and never a free pass.

Apart from the decision (``admitter.py``), which reads the row this returns: the
parameters' order, the statement's timeout and the cancellation are the database
protocol of admission, while the decision is its rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any, Literal, overload

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import ExecStatus, Format
from psycopg.types.numeric import Int4

from gateway.db import wire
from gateway.errors import service_unavailable
from gateway.settings import Settings

logger = logging.getLogger("gateway.admission")

Row = tuple[Any, ...]
TUPLES_OK = ExecStatus.TUPLES_OK
# The admission row comes back in binary: its 21 columns (uuids, floats, an array) cost
# less to send and to load than as text, and load to the same values
# (docs/performance.md, "What each part of the design saves").
BINARY = Format.BINARY

ADMIT_SQL = "SELECT * FROM gateway.admit(%s, %s, %s, %s, %s, %s)"
LOOKUP_SQL = "SELECT * FROM gateway.lookup_key(%s)"
# With a session (migrations 0009, 0010): the same admission, then the session, in ONE statement.
ADMIT_SESSION_SQL = "SELECT * FROM gateway.admit(%s, %s, %s, %s, %s, %s, %s)"
LOOKUP_SESSION_SQL = "SELECT * FROM gateway.lookup_key(%s, %s)"
# many requests in one statement (migration 0012): one row per element, in array order;
# key hashes, costs, then the window settings, then "grows" and session hashes per element
ADMIT_MANY_SQL = (
    "SELECT * FROM gateway.admit_many(%s::text[], %s::int4[], %s, %s, %s, %s::bool[], %s::text[])"
)


class AdmissionStatement:
    """Sends the admission statements with this instance's window and timeouts."""

    def __init__(self, settings: Settings) -> None:
        self.timeout_s = settings.admission_timeout_ms / 1000.0
        # the server gives up on a held counter row a little before the client does, so
        # the usual timeout is a clean error (connection reusable), not a cancellation
        lock_timeout_ms = max(1, int(settings.admission_timeout_ms * 0.8))
        sliding = settings.rate_limit_algorithm == "sliding"
        # the parameters after the key and cost, the same in every admit and admit_many
        self.window: tuple[int, bool, int] = (
            settings.rate_limit_window_s,
            sliding,
            lock_timeout_ms,
        )
        # reported by the admitter; what the wire reads is the same choice on the pool's
        # connections (prepare_threshold=None behind a transaction pooler, gateway.db.wire)
        self.prepare = settings.db_pooler != "transaction"

    def admit(
        self,
        conn: AsyncConnection[Any],
        key_hash: str,
        cost: int,
        grows: bool,
        session_hash: str | None,
        *,
        timeout: float | None = None,
    ) -> Awaitable[Row]:
        """``gateway.admit`` for one request (the round trip itself is the awaitable)."""
        if session_hash is None:
            return self.call(
                conn, ADMIT_SQL, (key_hash, cost, *self.window, grows), timeout=timeout
            )
        params = (key_hash, cost, *self.window, grows, session_hash)
        return self.call(conn, ADMIT_SESSION_SQL, params, timeout=timeout)

    def lookup(
        self, conn: AsyncConnection[Any], key_hash: str, session_hash: str | None
    ) -> Awaitable[Row]:
        """``gateway.lookup_key``: the key (and session) alone, nothing counted."""
        if session_hash is None:
            return self.call(conn, LOOKUP_SQL, (key_hash,))
        return self.call(conn, LOOKUP_SESSION_SQL, (key_hash, session_hash))

    async def send(
        self, conn: AsyncConnection[Any], items: list[tuple[Any, ...]], deadline: float
    ) -> list[Row]:
        """The coalescer's statement: the single admit for one request (the very statement
        used without coalescing), else admit_many (each request's
        ``(key_hash, cost, grows, session_hash)`` becomes one element of each array)."""
        timeout = max(0.001, deadline - time.monotonic())
        if len(items) == 1:
            return [await self.admit(conn, *items[0], timeout=timeout)]
        params = (
            [item[0] for item in items],
            [Int4(item[1]) for item in items],
            *self.window,
            [bool(item[2]) for item in items],
            [item[3] for item in items],
        )
        rows = await self.call(conn, ADMIT_MANY_SQL, params, timeout=timeout, many=True)
        if len(rows) != len(items):
            raise RuntimeError(f"admit_many answered {len(rows)} rows for {len(items)}")
        return rows

    @overload
    async def call(
        self,
        conn: AsyncConnection[Any],
        query: str,
        params: tuple[Any, ...],
        *,
        timeout: float | None = None,
        many: Literal[False] = False,
    ) -> Row: ...

    @overload
    async def call(
        self,
        conn: AsyncConnection[Any],
        query: str,
        params: tuple[Any, ...],
        *,
        timeout: float | None = None,
        many: Literal[True],
    ) -> list[Row]: ...

    async def call(
        self,
        conn: AsyncConnection[Any],
        query: str,
        params: tuple[Any, ...],
        *,
        timeout: float | None = None,
        many: bool = False,
    ) -> Any:
        """One bounded round trip, in the caller's task: a timeout, a counter row held
        too long or a lost connection is a fast 503.

        The timeout is the wire's (``gateway.db.wire.exchange``): past it the statement is
        cancelled on the server, and the connection closed if that takes longer than a
        moment too (an unreachable server). The caller's own cancellation reaches the
        statement directly.
        """
        state = wire.state_of(conn)
        try:
            [res] = await wire.exchange(
                conn,
                [state.bind(query, params)],
                BINARY,
                timeout=self.timeout_s if timeout is None else timeout,
            )
            if res.status != TUPLES_OK:
                wire.raise_for(res, conn)
        except wire.Timeout:
            raise service_unavailable("Admission timed out") from None
        except psycopg.errors.LockNotAvailable:
            raise service_unavailable(
                "Admission timed out waiting for the project's counter"
            ) from None
        except psycopg.OperationalError as exc:
            logger.warning("admission failed: %s", type(exc).__name__)
            # chained: gateway.pool.run_with_retry sees the lost connection behind the
            # 503 and runs the request once more on a fresh one when that is safe
            raise service_unavailable("Admission is unavailable: try again") from exc
        if many:
            return wire.all_rows(res, state)
        row = wire.first_row(res, state)
        assert row is not None
        return row
