"""The HTTP endpoints: parse HTTP, call the pipeline, render the answer. No SQL here."""

from __future__ import annotations

import asyncio
import datetime as dt

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.responses import json_response

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


async def readyz(request: Request) -> Response:
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
    ready = all(v == "up" for v in checks.values())
    return json_response(
        {
            "status": "ready" if ready else "unavailable",
            "instance": state.settings.instance_id,
            "checks": checks,
        },
        status=200 if ready else 503,
    )


def build_routes() -> list[Route]:
    return [
        Route(f"{BASE}/health", health, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
