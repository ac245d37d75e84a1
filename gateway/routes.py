"""The HTTP endpoints: parse HTTP, call the pipeline, render the answer. No SQL here."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.metrics import CONTENT_TYPE
from gateway.responses import json_response

logger = logging.getLogger("gateway")

BASE = "/v1/inhouse/db"
READY_TIMEOUT_S = 1.0


async def health(request: Request) -> Response:
    """The original's shape, unchanged: existing SDKs read these exact fields."""
    return json_response(
        {
            "status": "healthy",
            "service": "inhouse-gateway",
            "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "features": {"query": True, "schema": True, "rateLimit": True, "quotas": True},
        }
    )


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def _check(check: Any) -> bool:
    result = check()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


async def readyz(request: Request) -> Response:
    """200 when the pool hands out a working connection within 1 s and every check in
    ``extras["ready_checks"]`` (``(name, check)``, e.g. the listener) passes; else 503
    naming what is down."""
    state = request.app.state.gw
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            assert state.pool is not None
            async with state.pool.connection(timeout=READY_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
        checks["database"] = "up"
    except Exception:
        checks["database"] = "down"
    for name, check in list(state.extras.get("ready_checks", ())):
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                checks[name] = "up" if await _check(check) else "down"
        except Exception:
            checks[name] = "down"
    ready = all(v == "up" for v in checks.values())
    return json_response(
        {
            "status": "ready" if ready else "unavailable",
            "instance": state.settings.instance_id,
            "checks": checks,
        },
        status=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    """Prometheus text format, from this app's own registry."""
    registry = request.app.state.gw.extras["metrics"]
    return Response(registry.render(), media_type=CONTENT_TYPE)


def build_routes() -> list[Route]:
    return [
        Route(f"{BASE}/health", health, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
