"""``create_app(settings)``: the routes, the middleware and the lifespan of one instance.

The lifespan is the instance's lifecycle in one place: open the pool, start the
background pieces, and on shutdown stop them in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response

from gateway.admission.admitter import Admitter
from gateway.cells.runtime import CellRuntime, Cells, listening_caches, start_realtime
from gateway.db.budget import PlanError, PoolPlan
from gateway.db.pool import create_pool, plan_for
from gateway.http import admin, auth_routes, front, routes
from gateway.http import jobs as jobs_routes
from gateway.http.cors import GatewayCORS
from gateway.http.endpoint import http_error, unexpected_error
from gateway.jobs.worker import CHANNEL as JOBS_CHANNEL
from gateway.jobs.worker import JobsRuntime
from gateway.metadata.cache import MetadataCache
from gateway.metadata.listener import MetadataListener
from gateway.ops.observe import Observability, ObserveMiddleware
from gateway.query.pipeline import Pipeline
from gateway.realtime.hub import RealtimeHub
from gateway.settings import Settings

logger = logging.getLogger("gateway")

POOL_OPEN_TIMEOUT_S = 30.0

EXPOSED_HEADERS = [
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
    "X-Request-Id",
    "X-Gateway-Duration-Ms",
    "X-Project-Id",
]


@dataclass
class GatewayState:
    """Everything an instance holds while it runs; routes reach it as ``request.app.state.gw``.

    ``metadata`` is the per-instance catalog cache; ``listener`` the LISTEN connection that
    invalidates it. Other components that must hear about a project's changes (limits,
    status, keys, tables) register with ``listener.add_callbacks(on_project=..., on_all=...)``
    and may read ``listener.connected`` to know whether invalidations are live.
    """

    settings: Settings
    pool: AsyncConnectionPool | None = None
    pool_plan: PoolPlan | None = None
    pipeline: Pipeline | None = None
    admitter: Admitter | None = None
    metadata: MetadataCache | None = None
    listener: MetadataListener | None = None
    realtime: RealtimeHub | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # one runtime per cell and the route to them (gateway/cells/runtime.py); home's
    # runtime holds the fields above
    cells: Cells | None = None


def create_dev_app() -> Starlette:
    """The app of ``gateway dev`` (uvicorn imports it by name, so the ``gateway`` command
    itself never loads the HTTP stack): the development defaults of
    ``Settings.from_env(development=True)``, e.g. job endpoints on loopback admitted."""
    return create_app(Settings.from_env(development=True))


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    settings.require_database()
    state = GatewayState(settings=settings)
    # home's catalog cache, LISTEN connection and admitter, wired as every cell's; the
    # pool comes with the lifespan
    state.metadata, state.listener, state.admitter = listening_caches(settings, pool=None)
    observability = Observability(settings, state.extras)
    listener, metadata = state.listener, state.metadata
    # Without its LISTEN connection the instance can't hear about schema changes: 503.
    state.extras["ready_checks"].append(("listener", lambda: listener.connected))
    observability.metrics.register_source("metadata", metadata.stats)
    observability.metrics.register_source(
        "listener",
        lambda: {"up": int(listener.connected), "reconnects": listener.reconnects},
    )
    # background jobs: a worker in every instance, woken by NOTIFY on the listener
    jobs = JobsRuntime(settings, state.extras)
    state.extras["jobs"] = jobs
    state.listener.add_channel(JOBS_CHANNEL, jobs.wake)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert state.metadata is not None and state.listener is not None
        try:
            state.pool_plan = await plan_for(settings, timeout=POOL_OPEN_TIMEOUT_S)
        except PlanError as exc:
            logger.error("%s", exc)
            raise
        state.pool = create_pool(settings, state.pool_plan)
        await state.pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        observability.start(state.pool)
        observability.metrics.register_source("pool_plan", state.pool_plan.as_json)
        state.metadata.pool = state.pool
        state.pipeline = Pipeline(
            settings, state.pool, metadata=state.metadata, admitter=state.admitter
        )
        state.realtime = start_realtime(settings, state.pool, state.extras)
        # end-user auth: its service, cleanup job and metrics (gateway/http/auth_routes.py)
        auth = auth_routes.install(state)
        cells = Cells(settings)
        state.cells = cells
        home = CellRuntime(
            name="home",
            settings=settings,
            pool=state.pool,
            pool_plan=state.pool_plan,
            pipeline=state.pipeline,
            admitter=state.admitter,
            metadata=state.metadata,
            listener=state.listener,
            realtime=state.realtime,
            jobs=jobs,
            auth=auth,
            bandwidth=observability.bandwidth,
            maintenance=observability.maintenance,
        )
        # before the listener starts: the directory's channel rides on home's listener
        cells.attach_home(home, auth.hasher)
        observability.bandwidth.cell_pools = cells.remote_pools
        observability.cell_request_log = cells.request_log_for
        observability.metrics.register_source("cells", cells.stats)
        try:
            # In the background: /readyz says 503 until it listens; requests never wait.
            await state.listener.start()
            await jobs.start(state.pool)
            # the other cells' runtimes (none in a single-database deployment)
            await cells.open_remote()
            logger.info("instance %s ready: %s", settings.instance_id, state.pool_plan.summary())
            yield
        finally:
            await cells.close_remote()
            await jobs.stop()
            await state.listener.stop()
            await observability.stop_background()
            await state.realtime.stop()
            auth.close()
            # the request log flushes LAST, just before the pool closes: nothing is lost
            await observability.stop_request_log()
            await state.pool.close()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return http_error(exc)

    async def on_unexpected_error(request: Request, exc: Exception) -> Response:
        return unexpected_error(request, exc)

    app = Starlette(
        # the admin API (issue 15): none when GATEWAY_ADMIN_HMAC_SECRET is unset
        routes=routes.build_routes()
        + jobs_routes.build_routes()
        + admin.build_admin_routes(settings),
        middleware=[
            Middleware(
                ObserveMiddleware,
                metrics=observability.metrics,
                settings=settings,
                bandwidth=observability.bandwidth,  # quotas: bytes sent, after gzip
            ),
            Middleware(
                GatewayCORS,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["authorization", "x-api-key", "content-type", "last-event-id"],
                expose_headers=EXPOSED_HEADERS,
                allow_credentials=False,
                max_age=600,
            ),
            Middleware(GZipMiddleware, minimum_size=1024),
        ],
        exception_handlers={HTTPException: on_http_error, Exception: on_unexpected_error},
        lifespan=lifespan,
    )
    app.state.gw = state
    # outermost, before routing and middleware: the early local deny, the overload gate
    # and the hot data routes' lean path (gateway/http/lean.py)
    front.install(app, state, observability)
    return app
