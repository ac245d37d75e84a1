"""The instance's connection pool, sized by the connection budget (``gateway/db/budget.py``).

Three parts:

- **The limits** (``discover_limits``, ``plan_for``): the database's ``max_connections``
  and reserved connections, from the settings or asked of the database, turned into the
  instance's ``PoolPlan`` by ``budget.plan_pool``.
- **The pool** (``create_pool``): psycopg_pool ``AsyncConnectionPool``, opened by the
  lifespan. Connections are in autocommit: admission is a statement that must commit on
  its own before the tenant query starts, and the executor opens its own explicit
  transaction. Behind a transaction pooler (``GATEWAY_DB_POOLER=transaction``) no
  named server-side prepared statements are used. The names ``gateway.db.wire``
  prepares are tracked per connection object: a connection the pool replaces starts
  with none, and one whose server session lost them (``DISCARD ALL``) finds out by the
  ``26000`` of its next statement and prepares them again.
- **Most recently used first.** psycopg_pool hands its idle connections out in the order
  they came back (first in, first out), so under load every connection of the pool, and
  so every server backend, takes turns. The gateway's pool hands out the connection
  returned last (``MostRecentFirst``): the same few backends serve the requests while
  the others stay idle, and their caches stay warm. Side by side (``read_pk_2``'s load,
  2 instances, 8 alternating rounds of 6 s, three runs): 2.7 to 3.8 % less CPU per read,
  PostgreSQL's 5 to 7 % less (docs/performance.md,
  "What each part of the design saves").
- **Checkout** (``acquire``, ``run_with_retry``): no connection within
  ``GATEWAY_POOL_TIMEOUT_S``, a full wait queue, or a database that can't be reached is a
  ``GatewayError`` 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After: 1`` — never a hang. A
  connection the server closed while it sat idle in the pool is noticed at checkout
  without a round trip (its socket is readable: the server's goodbye or EOF is waiting)
  and replaced before anything is sent on it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from gateway.db.budget import NEON_RESERVED_CONNECTIONS, PoolPlan, plan_pool, static_plan
from gateway.errors import GatewayError, service_unavailable
from gateway.settings import Settings

logger = logging.getLogger("gateway.pool")

T = TypeVar("T")

RECONNECT_TIMEOUT_S = 5.0
SETUP_APPLICATION_NAME = "gateway-setup"

# SQLSTATEs with which PostgreSQL announces that it ended the session itself. The server
# rolls back whatever was in flight, and a statement that committed had its reply sent
# before the goodbye, so running the unit again cannot apply it twice.
SESSION_ENDED_BY_SERVER = frozenset(
    {
        "57P01",  # admin_shutdown: pg_terminate_backend, fast/immediate shutdown
        "57P03",  # cannot_connect_now: the server is starting or stopping
        "57P05",  # idle_session_timeout: only ever sent to an idle session
    }
)


# The monotonic time by which the current request must have its connection (set by the
# HTTP front's overload gate: arrival + GATEWAY_POOL_TIMEOUT_S, so time spent waiting at
# the gate counts against the pool timeout). Checkouts never wait past it.
REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("gateway_request_deadline", default=None)


def checkout_deadline(pool: AsyncConnectionPool, timeout: float | None) -> float:
    """``timeout`` (default: the pool's) from now, but never past ``REQUEST_DEADLINE``."""
    deadline = time.monotonic() + (pool.timeout if timeout is None else timeout)
    request_deadline = REQUEST_DEADLINE.get()
    return deadline if request_deadline is None else min(deadline, request_deadline)


# --- the limits -----------------------------------------------------------------------


def _is_neon(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host.endswith(".neon.tech") or host.endswith(".neon.build")


async def _show(conn: AsyncConnection[Any], name: str) -> int | None:
    try:
        cur = await conn.execute(f"SHOW {name}")  # a fixed name from this module, never input
    except psycopg.errors.UndefinedObject:
        return None
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def discover_limits(settings: Settings, *, timeout: float = 30.0) -> tuple[int, int, str]:
    """``(max_connections, reserved, source)``: from the settings, else from the database.

    Asks ``SHOW max_connections`` and ``SHOW superuser_reserved_connections`` (plus
    ``reserved_connections`` on PostgreSQL 16+) on one short connection to
    ``DATABASE_DIRECT_URL``, or to ``DATABASE_URL`` when that can't be reached. On Neon
    (host ``*.neon.tech``) at least Neon's 7 reserved connections are assumed. A database
    that doesn't answer yet is asked again until ``timeout``.
    """
    max_connections = settings.db_max_connections
    reserved = settings.db_reserved_connections
    if max_connections is not None and reserved is not None:
        return max_connections, reserved, "settings"
    # the direct URL first; if it can't be reached, the pool's URL (a pooler forwards SHOW
    # to the server): an unreachable direct URL is the listener's problem, reported by
    # /readyz, and must not keep the instance from serving
    urls = list(dict.fromkeys(u for u in (settings.direct_url, settings.database_url) if u))
    deadline = time.monotonic() + timeout
    conn: AsyncConnection[Any] | None = None
    url = urls[0]
    while conn is None:
        for url in urls:
            try:
                conn = await AsyncConnection.connect(
                    url,
                    autocommit=True,
                    application_name=SETUP_APPLICATION_NAME,
                    connect_timeout=5,
                    prepare_threshold=None,
                )
                break
            except psycopg.OperationalError:
                if url == urls[-1] and time.monotonic() + 0.5 > deadline:
                    raise
        if conn is None:
            await asyncio.sleep(0.5)
    source = "database" if max_connections is None and reserved is None else "settings + database"
    async with conn:
        if max_connections is None:
            max_connections = await _show(conn, "max_connections") or 100
        if reserved is None:
            superuser = await _show(conn, "superuser_reserved_connections") or 0
            others = await _show(conn, "reserved_connections") or 0  # PostgreSQL 16+
            reserved = superuser + others
            if _is_neon(url):
                reserved = max(reserved, NEON_RESERVED_CONNECTIONS)
    return max_connections, reserved, source


async def plan_for(settings: Settings, *, timeout: float = 30.0) -> PoolPlan:
    """The plan this instance runs with: discover the limits, then ``plan_pool``."""
    max_connections, reserved, source = await discover_limits(settings, timeout=timeout)
    return plan_pool(settings, max_connections, reserved, source=source)


# --- the pool -------------------------------------------------------------------------


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": settings.application_name,
        "connect_timeout": 5,
        # a peer that vanished without a FIN (half-open TCP) is noticed in ~45 s, not 2 h
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    if settings.db_pooler == "transaction":
        # no named server-side prepared statements via PgBouncer: psycopg's cursors read
        # this, and so does gateway.db.wire (unnamed statements on these connections)
        kwargs["prepare_threshold"] = None
    return kwargs


def create_pool(
    settings: Settings, plan: PoolPlan | None = None, *, max_size: int | None = None
) -> AsyncConnectionPool:
    """The instance's pool (not opened: the lifespan calls ``await pool.open(wait=True)``).

    No ``check`` callback: a check per checkout costs a round trip. ``acquire`` instead
    tests the socket without a round trip, and ``run_with_retry`` retries once when the
    server ended the session.
    """
    plan = plan or static_plan(settings, max_size)
    pool: AsyncConnectionPool = AsyncConnectionPool(
        settings.database_url,
        min_size=plan.pool_min,
        max_size=plan.pool_max,
        timeout=plan.timeout,
        max_waiting=plan.max_waiting,
        max_idle=settings.pool_max_idle_s,
        # bounds what one backend caches of the catalog (docs/scaling.md)
        max_lifetime=settings.pool_max_lifetime_s,
        reconnect_timeout=RECONNECT_TIMEOUT_S,
        kwargs=connection_kwargs(settings),
        connection_class=AsyncConnection,
        open=False,
        name=settings.application_name,
    )
    pool._pool = MostRecentFirst()  # empty until the pool opens
    return pool


class MostRecentFirst(collections.deque[Any]):
    """psycopg_pool's deque of idle connections (``AsyncConnectionPool._pool``), handing
    out the connection returned last. The pool returns connections with ``append`` and
    takes them with ``popleft`` (psycopg-pool 3.2 and 3.3; ``tests/db/test_pool.py``
    checks the order): here ``popleft`` takes from the right.

    The pool's shrinking after ``max_idle`` takes with ``popleft`` too, so of the idle
    connections it closes the one used last; the ones never needed stay open until
    their lifetime ends or the server closes them (a checkout notices: ``acquire``)."""

    def popleft(self) -> Any:
        return self.pop()


# --- checkout: overload and outage answers --------------------------------------------


def connection_is_dead(conn: AsyncConnection[Any]) -> bool:
    """Did the server close this idle connection? Decided without a round trip.

    An idle connection has nothing to read. If its socket is readable, the server sent
    something while it sat in the pool: usually its goodbye (``FATAL: terminating
    connection``) followed by EOF; rarely a harmless notice or parameter status. Read it:
    EOF or an error makes the connection dead.
    """
    pgconn = conn.pgconn
    if pgconn.status != ConnStatus.OK:
        return True
    if pgconn.transaction_status != TransactionStatus.IDLE:
        return False  # not ours to judge: the pool resets it
    try:
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
        for _ in range(4):
            if not poller.poll(0):
                return False
            pgconn.consume_input()  # raises on EOF ("server closed the connection")
            pgconn.is_busy()  # parses what arrived (a goodbye while idle becomes a notice)
            if pgconn.status != ConnStatus.OK:
                return True
    except (psycopg.OperationalError, OSError, ValueError):
        return True
    return pgconn.status != ConnStatus.OK


async def checkout(pool: AsyncConnectionPool, deadline: float) -> AsyncConnection[Any]:
    """A live connection before ``deadline`` (monotonic), else ``GatewayError`` 503."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise PoolTimeout("deadline passed")
            conn: AsyncConnection[Any] = await pool.getconn(timeout=remaining)
        except TooManyRequests:
            raise service_unavailable(
                "the gateway is overloaded: too many requests are waiting for a database "
                "connection; retry shortly"
            ) from None
        except PoolTimeout:
            raise service_unavailable(
                f"no database connection within {pool.timeout:g} s: the database is "
                "overloaded or unreachable; retry shortly"
            ) from None
        except PoolClosed:
            raise service_unavailable("the gateway is shutting down; retry shortly") from None
        if not connection_is_dead(conn):
            return conn
        logger.info("discarding a connection the server closed while it was idle")
        with contextlib.suppress(Exception):
            await conn.close()
        await pool.putconn(conn)  # a closed connection is dropped and replaced by the pool


def connection_lost(conn: AsyncConnection[Any], exc: BaseException) -> bool:
    """``exc`` broke ``conn``: an OperationalError that left the connection closed."""
    return lost_connection_error(conn, exc) is not None


def lost_connection_error(
    conn: AsyncConnection[Any], exc: BaseException
) -> psycopg.OperationalError | None:
    """The OperationalError that broke ``conn``: ``exc`` itself, or the cause of a
    ``GatewayError`` 503 a component raised for it (``raise service_unavailable(...) from exc``)."""
    if not conn.closed:
        return None
    if isinstance(exc, psycopg.OperationalError):
        return exc
    if isinstance(exc, GatewayError) and isinstance(exc.__cause__, psycopg.OperationalError):
        return exc.__cause__
    return None


def retry_is_safe(exc: BaseException, *, idempotent: bool) -> bool:
    """May a unit that failed with ``exc`` on a lost connection be run again?

    Yes when PostgreSQL itself said it ended the session (``SESSION_ENDED_BY_SERVER``):
    whatever was in flight was rolled back. A connection that just vanished (EOF, reset,
    no SQLSTATE) is ambiguous — a COMMIT may have landed before the reply was lost — so
    only an ``idempotent`` unit is run again.
    """
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in SESSION_ENDED_BY_SERVER:
        return True
    return idempotent and sqlstate is None


@contextlib.asynccontextmanager
async def acquire(
    pool: AsyncConnectionPool | None, timeout: float | None = None
) -> AsyncIterator[AsyncConnection[Any]]:
    """``async with acquire(pool) as conn``: a live pooled connection, or a 503.

    No connection within ``timeout`` (default: the pool's), a full wait queue, a pool that
    can't connect, or the connection lost while in use → ``GatewayError`` 503
    ``SERVICE_UNAVAILABLE`` with ``Retry-After: 1``.
    """
    if pool is None:
        raise service_unavailable("the gateway is starting; retry shortly")
    deadline = checkout_deadline(pool, timeout)
    conn = await checkout(pool, deadline)
    try:
        async with conn:
            yield conn
    except psycopg.OperationalError as exc:
        if connection_lost(conn, exc):
            raise service_unavailable("the database connection was lost; retry shortly") from exc
        raise
    finally:
        await pool.putconn(conn)


async def run_with_retry(
    pool: AsyncConnectionPool | None,
    fn: Callable[[AsyncConnection[Any]], Awaitable[T]],
    *,
    timeout: float | None = None,
    idempotent: bool = False,
) -> T:
    """``await fn(conn)`` on a pooled connection; once more on a fresh one if it was lost.

    The unit is retried once when the connection broke and ``retry_is_safe`` says running
    it again cannot apply anything twice. Anything else about a lost connection, and any
    checkout failure, is ``GatewayError`` 503 with ``Retry-After: 1``. ``timeout`` bounds
    the waits for a connection (both attempts together).
    """
    if pool is None:
        raise service_unavailable("the gateway is starting; retry shortly")
    deadline = checkout_deadline(pool, timeout)
    for attempt in (1, 2):
        conn = await checkout(pool, deadline)
        try:
            # not ``async with conn``: on an autocommit connection its commit is a no-op
            # that still takes the connection's lock and a wait (every request pays it),
            # and a connection given back inside a transaction is rolled back by putconn
            return await fn(conn)
        except (psycopg.OperationalError, GatewayError) as exc:
            lost = lost_connection_error(conn, exc)
            if lost is None:
                raise
            if attempt == 2 or not retry_is_safe(lost, idempotent=idempotent):
                if isinstance(exc, GatewayError):
                    raise
                raise service_unavailable(
                    "the database connection was lost; retry shortly"
                ) from exc
            logger.info("retrying once on a fresh connection: %s (%s)", lost.sqlstate, lost)
            # the retry gets at least a moment to find a connection
            deadline = max(deadline, time.monotonic() + min(pool.timeout, 1.0))
        finally:
            await pool.putconn(conn)
    raise AssertionError("unreachable")  # pragma: no cover
