"""A real pool, planned and opened the way the app does it, for the pool tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gateway.db.budget import plan_pool
from gateway.db.pool import create_pool
from gateway.settings import Settings


def settings_for(url: str = "postgresql://x/y", **env: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": url, **env})


@contextlib.asynccontextmanager
async def real_pool(url: str, **env: str) -> AsyncIterator[Any]:
    settings = settings_for(url, **env)
    plan = plan_pool(settings, 300, 3)
    pool = create_pool(settings, plan)
    await pool.open(wait=True, timeout=30)
    try:
        yield pool
    finally:
        await pool.close()
