"""The auth API's HTTP side, under ``/v1/inhouse/auth``: read the request, hand it to
``AuthService``, render its answer, write the request-log row. No SQL here.

``install(state)`` creates the service once the pool is open and registers its cleanup
with the maintenance leader and its figures as a metrics source.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from psycopg import AsyncConnection
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import rules, store
from gateway.auth.keys import MAX_KEY_LENGTH
from gateway.auth.rules import AuthError
from gateway.auth.service import ACTIONS, AuthService, Caller
from gateway.errors import GatewayError
from gateway.http.endpoint import new_request_id
from gateway.http.responses import JSON, forwarded_for
from gateway.ops.request_log import LogRecord, client_ip
from gateway.query.pipeline import Outcome

logger = logging.getLogger("gateway.auth")

AUTH_BASE = "/v1/inhouse/auth"


def install(state: Any) -> AuthService:
    """The instance's auth service; cleanup of throttle windows, links and dead sessions
    runs as a job of the maintenance leader (one instance per tick)."""
    service = AuthService(state.settings, state.pipeline)
    state.extras["auth"] = service
    metrics = state.extras.get("metrics")
    if metrics is not None:
        metrics.register_source("auth", service.stats)
    maintenance = state.extras.get("maintenance")
    if maintenance is not None:
        window_s = state.settings.auth.throttle_window_s

        async def auth_cleanup(conn: AsyncConnection[Any]) -> int:
            return await store.cleanup(conn, window_s)

        maintenance.register("auth_cleanup", auth_cleanup, every_s=60.0)
    return service


async def _read(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > rules.MAX_BODY_BYTES:
        raise AuthError(
            "PAYLOAD_TOO_LARGE", f"the request body exceeds {rules.MAX_BODY_BYTES} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > rules.MAX_BODY_BYTES:
            raise AuthError(
                "PAYLOAD_TOO_LARGE", f"the request body exceeds {rules.MAX_BODY_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _refused(error: GatewayError) -> Outcome:
    """A refusal before the service runs (an unknown route, an oversized body)."""
    out = Outcome(status=200, body=b"").refuse(error, rules.error_body)
    out.headers.update(rules.NO_STORE)
    return out


def _render(out: Outcome, request_id: str, started: float) -> Response:
    headers = dict(out.headers)
    headers["X-Request-Id"] = request_id
    headers["X-Gateway-Duration-Ms"] = f"{(time.perf_counter() - started) * 1000:.2f}"
    if out.project_id:
        headers["X-Project-Id"] = out.project_id
    return Response(out.body, status_code=out.status, media_type=JSON, headers=headers)


def _record(request: Request, path: str, out: Outcome, request_id: str, started: float) -> None:
    """One request-log row, like the data routes' (only once the key named a project)."""
    state = request.app.state.gw
    observability = state.extras.get("observability")
    if observability is None:
        return
    try:
        if out.admission:
            observability.metrics.count_admission(out.admission)
        if out.project_id is None:
            return
        client = request.client
        observability.request_log.record(
            LogRecord(
                method=request.method,
                path=f"/auth/{path}",
                status_code=out.status,
                duration_ms=(time.perf_counter() - started) * 1000,
                project_id=out.project_id,
                api_key_id=out.key_id,
                request_id=request_id,
                error_code=out.error_code,
                response_size_bytes=len(out.body),
                client_ip=client_ip(
                    client.host if client else None,
                    forwarded_for(request.headers),
                    state.settings.trusted_proxies,
                ),
                user_agent=request.headers.get("user-agent"),
                instance_id=state.settings.instance_id,
            )
        )
    except Exception:  # pragma: no cover - observation must never fail a request
        logger.exception("recording the auth request failed")


async def auth_endpoint(request: Request) -> Response:
    started = time.perf_counter()
    request_id = new_request_id()
    path = request.path_params.get("path", "").strip("/")
    action = ACTIONS.get((request.method, path))
    service: AuthService | None = request.app.state.gw.extras.get("auth")
    if action is None or service is None:
        known = any(p == path for _, p in ACTIONS)
        error = (
            AuthError("METHOD_NOT_ALLOWED", "method not allowed")
            if known
            else AuthError("NOT_FOUND", "no such auth route")
        )
        return _render(_refused(error), request_id, started)
    try:
        body = await _read(request) if request.method == "POST" else b""
    except AuthError as error:
        return _render(_refused(error), request_id, started)
    except ClientDisconnect:
        return Response(status_code=400)
    settings = request.app.state.gw.settings
    client = request.client
    caller = Caller(
        api_key=request.headers.get("x-api-key"),
        authorization=request.headers.get("authorization"),
        ip=client_ip(
            client.host if client else None,
            forwarded_for(request.headers),
            settings.trusted_proxies,
        ),
        user_agent=request.headers.get("user-agent"),
    )
    # the project's cell (the key is x-api-key's; without one, home's service refuses it)
    try:
        runtime = await request.app.state.gw.cells.runtime_for(
            (caller.api_key or "").strip()[:MAX_KEY_LENGTH] or None
        )
    except GatewayError as error:
        out = _refused(error)
    else:
        out = await (runtime.auth or service).handle(action, caller, body)
    _record(request, path, out, request_id, started)
    return _render(out, request_id, started)


def build_routes() -> list[Route]:
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    # every path under the base answers in the auth envelope with no-store, even a 404
    return [
        Route(AUTH_BASE, auth_endpoint, methods=methods),
        Route(AUTH_BASE + "/{path:path}", auth_endpoint, methods=methods),
    ]
