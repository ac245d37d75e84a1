"""The HTTP endpoints: parse HTTP, call the pipeline, render the answer. No SQL here."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth.bearer import credentials_from_headers
from gateway.db.pool import acquire
from gateway.errors import GatewayError
from gateway.http import auth_routes
from gateway.http.responses import JSON, error_response, json_response
from gateway.ops.metrics import CONTENT_TYPE
from gateway.query.pipeline import Outcome
from gateway.realtime.stream import issue_ticket, open_stream, stream_response

logger = logging.getLogger("gateway")

BASE = "/v1/inhouse/db"
READY_TIMEOUT_S = 1.0
ARRIVED = "gateway.arrived"  # scope key: perf_counter() at the HTTP front (issue 16)


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


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _render(
    request: Request, kind: str, outcome: Outcome, request_id: str, started: float
) -> Response:
    headers = _observe(request, kind, outcome, request_id, started)
    return Response(outcome.body, status_code=outcome.status, media_type=JSON, headers=headers)


def _observe(
    request: Request, kind: str, outcome: Outcome, request_id: str, started: float
) -> dict[str, str]:
    """Record the outcome (metrics, request log, access line); the response's headers."""
    duration_ms = (time.perf_counter() - started) * 1000
    headers = dict(outcome.headers)
    headers["X-Request-Id"] = request_id
    headers["X-Gateway-Duration-Ms"] = f"{duration_ms:.2f}"
    observability = request.app.state.gw.extras.get("observability")
    if observability is not None:
        client = request.client
        observability.record_outcome(
            kind,
            outcome,
            request_id=request_id,
            duration_ms=duration_ms,
            peer=client.host if client else None,
            forwarded_for=request.headers.get("x-forwarded-for"),
            user_agent=request.headers.get("user-agent"),
        )
        if observability.access_json:  # extra fields for the JSON access line
            request.scope.setdefault("state", {})["gateway_log"] = {
                "request_id": request_id,
                "project_id": outcome.project_id,
                "operation": outcome.operation,
                "table": outcome.table,
                "error_code": outcome.error_code,
            }
    return headers


def _request_id(request: Request) -> str:
    return uuid.uuid4().hex


def _started(request: Request) -> float:
    """When the request arrived: at the overload gate (``gateway/http/front.py``) if it
    waited there — that wait is part of its duration — else now."""
    arrived = request.scope.get(ARRIVED)
    return arrived if isinstance(arrived, float) else time.perf_counter()


async def _with_body(request: Request, batch: bool) -> Response:
    started = _started(request)
    request_id = _request_id(request)
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
    pipeline = state.pipeline
    outcome = await (
        pipeline.batch(key, body, session) if batch else pipeline.query(key, body, session)
    )
    return _render(request, "batch" if batch else "query", outcome, request_id, started)


async def query(request: Request) -> Response:
    return await _with_body(request, batch=False)


async def batch(request: Request) -> Response:
    return await _with_body(request, batch=True)


async def schema(request: Request) -> Response:
    started = _started(request)
    key, session = credentials_from_headers(request.headers)
    outcome = await request.app.state.gw.pipeline.schema(key, session)
    return _render(request, "schema", outcome, _request_id(request), started)


async def realtime(request: Request) -> Response:
    """Opening a stream is a request like any other (logged when it is opened or refused;
    ``duration_ms`` is the time to open it, not its lifetime)."""
    started = time.perf_counter()
    request_id = _request_id(request)
    outcome, sub = await open_stream(request)
    if sub is None:
        return _render(request, "realtime", outcome, request_id, started)
    return stream_response(
        request, sub, _observe(request, "realtime", outcome, request_id, started)
    )


async def realtime_ticket(request: Request) -> Response:
    """A single-use ticket for a stream's URL; a request like any other (logged)."""
    started = _started(request)
    outcome = await issue_ticket(request)
    return _render(request, "ticket", outcome, _request_id(request), started)


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
