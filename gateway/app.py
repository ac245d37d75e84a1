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
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response

from gateway import routes
from gateway.errors import GatewayError
from gateway.observe import Observability, ObserveMiddleware
from gateway.pipeline import Pipeline
from gateway.pool import PlanError, PoolPlan, create_pool, plan_for
from gateway.responses import error_response
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
    """Everything an instance holds while it runs; routes reach it as ``request.app.state.gw``."""

    settings: Settings
    pool: AsyncConnectionPool | None = None
    pool_plan: PoolPlan | None = None
    pipeline: Pipeline | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    settings.require_database()
    state = GatewayState(settings=settings)
    observability = Observability(settings, state.extras)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            state.pool_plan = await plan_for(settings, timeout=POOL_OPEN_TIMEOUT_S)
        except PlanError as exc:
            logger.error("%s", exc)
            raise
        state.pool = create_pool(settings, state.pool_plan)
        await state.pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        observability.start(state.pool)
        plan = state.pool_plan
        observability.metrics.register_source("pool_plan", plan.as_json)
        state.pipeline = Pipeline(settings, state.pool)
        logger.info("instance %s ready: %s", settings.instance_id, state.pool_plan.summary())
        try:
            yield
        finally:
            await observability.stop_background()
            # the request log flushes LAST, just before the pool closes: nothing is lost
            await observability.stop_request_log()
            await state.pool.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "INVALID_QUERY")
        return error_response(GatewayError(code, str(exc.detail), status=exc.status_code))

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(GatewayError("INTERNAL_ERROR", "internal error", status=500))

    app = Starlette(
        routes=routes.build_routes(),
        middleware=[
            Middleware(ObserveMiddleware, metrics=observability.metrics, settings=settings),
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["authorization", "x-api-key", "content-type", "last-event-id"],
                expose_headers=EXPOSED_HEADERS,
                allow_credentials=False,
                max_age=600,
            ),
            Middleware(GZipMiddleware, minimum_size=1024),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        lifespan=lifespan,
    )
    app.state.gw = state
    return app
