"""``CellRuntime``: what one instance holds for one cell (one PostgreSQL database).

Everything the request path needs for a project lives in its cell, so each cell has its
own pool (sized from that cell's connection budget), LISTEN connection, catalog cache,
admitter, pipeline, realtime hub, job worker and auth service. The instance holds one
runtime per cell in ``GatewayState.cells``; ``home`` (the control database) is always
there, and a single-database deployment has only ``home``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from gateway.admission.admitter import Admitter
from gateway.db.budget import PoolPlan
from gateway.metadata.cache import MetadataCache
from gateway.metadata.listener import MetadataListener
from gateway.query.pipeline import Pipeline
from gateway.realtime.hub import RealtimeHub
from gateway.settings import Settings


@dataclass
class CellRuntime:
    """One cell's resources in this instance. ``settings`` are the instance's settings
    with the cell's URLs (``Cell.settings``)."""

    name: str
    settings: Settings
    pool: AsyncConnectionPool | None = None
    pool_plan: PoolPlan | None = None
    pipeline: Pipeline | None = None
    admitter: Admitter | None = None
    metadata: MetadataCache | None = None
    listener: MetadataListener | None = None
    realtime: RealtimeHub | None = None
    jobs: Any = None  # gateway.jobs.worker.JobsRuntime
    auth: Any = None  # gateway.auth.service.AuthService
