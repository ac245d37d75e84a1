"""The HTTP endpoints: parse HTTP, call the pipeline, render the answer. No SQL here."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope

from gateway.db.pool import acquire
from gateway.http import auth_routes
from gateway.http.data import DataAnswer, answer_query, answer_schema, to_response
from gateway.http.endpoint import (
    arrival_time,
    new_request_id,
    observe,
)
from gateway.http.responses import JSON, json_response
from gateway.ops.metrics import CONTENT_TYPE
from gateway.query.pipeline import Outcome
from gateway.realtime.stream import issue_ticket, open_stream, stream_response

logger = logging.getLogger("gateway")

BASE = "/v1/inhouse/db"
READY_TIMEOUT_S = 1.0
# served by the HTTP front's lean path (gateway/http/lean.py), not the middleware stack
HOT_PATHS = (f"{BASE}/query", f"{BASE}/batch", f"{BASE}/schema", f"{BASE}/realtime/ticket")
# of those, the data routes, answered from the scope without a Request or Response
# (gateway/http/data.py); the lean path sends their DataAnswer as is
DATA_ANSWERS: dict[str, Callable[[Scope, Receive], Awaitable[DataAnswer]]] = {
    f"{BASE}/query": functools.partial(answer_query, batch=False),
    f"{BASE}/batch": functools.partial(answer_query, batch=True),
    f"{BASE}/schema": answer_schema,
}


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


def _stack_endpoint(path: str) -> Callable[[Request], Awaitable[Response]]:
    """A data route's Starlette endpoint (the middleware stack's way in, e.g. ``HEAD
    /schema``): its ``DATA_ANSWERS`` answer as a ``Response``."""
    answer_for = DATA_ANSWERS[path]

    async def endpoint(request: Request) -> Response:
        return to_response(await answer_for(request.scope, request.receive))

    return endpoint


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
        Route(f"{BASE}/query", _stack_endpoint(f"{BASE}/query"), methods=["POST"], name="query"),
        Route(f"{BASE}/batch", _stack_endpoint(f"{BASE}/batch"), methods=["POST"], name="batch"),
        Route(f"{BASE}/schema", _stack_endpoint(f"{BASE}/schema"), methods=["GET"], name="schema"),
        Route(f"{BASE}/realtime", realtime, methods=["GET"]),
        Route(f"{BASE}/realtime/ticket", realtime_ticket, methods=["POST"]),
        Route(f"{BASE}/health", health, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        # end-user auth under /v1/inhouse/auth (gateway/http/auth_routes.py)
        *auth_routes.build_routes(),
    ]
