"""The instance's connection pool to ``DATABASE_URL``.

Pool connections are in autocommit: admission is a statement that must commit on its
own before the tenant query starts, and the executor opens its own explicit transaction.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.settings import Settings

DEFAULT_POOL_MAX = 10


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": settings.application_name,
        "connect_timeout": 5,
    }
    if settings.db_pooler == "transaction":
        kwargs["prepare_threshold"] = None  # no server-side prepared statements via PgBouncer
    return kwargs


def create_pool(settings: Settings, *, max_size: int | None = None) -> AsyncConnectionPool:
    size = max_size or settings.pool_max or DEFAULT_POOL_MAX
    return AsyncConnectionPool(
        settings.database_url,
        min_size=min(settings.pool_min, size),
        max_size=size,
        timeout=settings.pool_timeout_s,
        max_waiting=settings.pool_max_waiting or 8 * size,
        max_idle=60.0,
        reconnect_timeout=5.0,
        kwargs=connection_kwargs(settings),
        connection_class=AsyncConnection,
        open=False,
        name=settings.application_name,
    )
