"""The HTTP endpoints: parse HTTP, call the pipeline, render the answer. No SQL here."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import time
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth.bearer import credentials_from_headers
from gateway.db.pool import acquire
from gateway.errors import GatewayError
from gateway.http import auth_routes
from gateway.http.endpoint import (
    BodyTooLarge,
    arrival_time,
    new_request_id,
    observe,
    read_body,
)
from gateway.http.responses import JSON, error_response, json_response
from gateway.ops.metrics import CONTENT_TYPE
from gateway.query.pipeline import Outcome
from gateway.realtime.stream import issue_ticket, open_stream, stream_response

logger = logging.getLogger("gateway")

BASE = "/v1/inhouse/db"
READY_TIMEOUT_S = 1.0
# served by the HTTP front's lean path (gateway/http/lean.py), not the middleware stack
HOT_PATHS = (f"{BASE}/query", f"{BASE}/batch", f"{BASE}/schema", f"{BASE}/realtime/ticket")


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
            async with acquire(state.pool, timeout=READY_TIMEOUT_S) as conn:
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
    body: dict[str, Any] = {}
    if state.listener is not None:
        body["listener"] = state.listener.state()
    if state.metadata is not None:
        body["metadata"] = state.metadata.stats()
    if state.cells is not None and not state.cells.single:
        body["cells"] = state.cells.readiness()  # reported, never a reason to be unready
    ready = all(v == "up" for v in checks.values())
    return json_response(
        {
            "status": "ready" if ready else "unavailable",
            "instance": state.settings.instance_id,
            "checks": checks,
            **body,
        },
        status=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    """Prometheus text format, from this app's own registry."""
    registry = request.app.state.gw.extras["metrics"]
    return Response(registry.render(), media_type=CONTENT_TYPE)


def _render(
    request: Request, kind: str, outcome: Outcome, request_id: str, started: float
) -> Response:
    headers = observe(request, kind, outcome, request_id, started)
    return Response(outcome.body, status_code=outcome.status, media_type=JSON, headers=headers)


async def _with_body(request: Request, batch: bool) -> Response:
    started = arrival_time(request)
    request_id = new_request_id()
    state = request.app.state.gw
    try:
        body = await read_body(request, state.settings.max_body_bytes)
    except BodyTooLarge:
        limit_kb = state.settings.max_body_bytes // 1024
        error = GatewayError("PAYLOAD_TOO_LARGE", f"the request body exceeds {limit_kb} KB")
        return error_response(error, {"X-Request-Id": request_id})
    except ClientDisconnect:
        return Response(status_code=400)
    key, session = credentials_from_headers(request.headers)
    try:
        runtime, key_hash = await state.cells.route(key)
    except GatewayError as error:
        outcome = Outcome(status=200, body=b"").refuse(error)
    else:
        run = runtime.pipeline.batch if batch else runtime.pipeline.query
        outcome = await run(key, body, session, key_hash)
    return _render(request, "batch" if batch else "query", outcome, request_id, started)


async def query(request: Request) -> Response:
    return await _with_body(request, batch=False)


async def batch(request: Request) -> Response:
    return await _with_body(request, batch=True)


async def schema(request: Request) -> Response:
    started = arrival_time(request)
    key, session = credentials_from_headers(request.headers)
    try:
        runtime, key_hash = await request.app.state.gw.cells.route(key)
    except GatewayError as error:
        outcome = Outcome(status=200, body=b"").refuse(error)
    else:
        outcome = await runtime.pipeline.schema(key, session, key_hash)
    return _render(request, "schema", outcome, new_request_id(), started)


async def realtime(request: Request) -> Response:
    """Opening a stream is a request like any other (logged when it is opened or refused;
    ``duration_ms`` is the time to open it, not its lifetime)."""
    started = time.perf_counter()
    request_id = new_request_id()
    outcome, sub = await open_stream(request)
    if sub is None:
        return _render(request, "realtime", outcome, request_id, started)
    return stream_response(request, sub, observe(request, "realtime", outcome, request_id, started))


async def realtime_ticket(request: Request) -> Response:
    """A single-use ticket for a stream's URL; a request like any other (logged)."""
    started = arrival_time(request)
    outcome = await issue_ticket(request)
    return _render(request, "ticket", outcome, new_request_id(), started)


def build_routes() -> list[Route]:
    return [
        Route(f"{BASE}/query", query, methods=["POST"]),
        Route(f"{BASE}/batch", batch, methods=["POST"]),
        Route(f"{BASE}/schema", schema, methods=["GET"]),
        Route(f"{BASE}/realtime", realtime, methods=["GET"]),
        Route(f"{BASE}/realtime/ticket", realtime_ticket, methods=["POST"]),
        Route(f"{BASE}/health", health, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        # end-user auth under /v1/inhouse/auth (gateway/http/auth_routes.py)
        *auth_routes.build_routes(),
    ]
