"""``/v1/inhouse/jobs``: the original's jobs API, in its ``{ok, data}`` envelope.

Server keys only (a public key → 403 ``INSUFFICIENT_SCOPES``). Every request goes
through ``Pipeline.admitted`` like /query, /schema and realtime: the local deny, admission
(key, rate limit and quotas in one statement, one request of cost), then its jobs
statement on the same connection — two round trips — and one request-log row (method,
``/jobs/...`` path, status, error code). Only the body differs: the jobs API's
``{ok, data}`` / ``{ok: false, error, quota?}`` envelope instead of the data API's. The
rules live in ``gateway.jobs.rules``, the SQL in ``gateway.jobs.store`` and
``gateway.jobs.schedules``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from psycopg import AsyncConnection
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admission.decision import Admission
from gateway.auth.bearer import credentials_from_headers
from gateway.errors import GatewayError
from gateway.http.endpoint import BodyTooLarge, arrival_time, new_request_id, observe, read_body
from gateway.http.responses import JSON, error_response
from gateway.jobs import rules, schedules, store
from gateway.jobs.rules import invalid
from gateway.query.pipeline import Outcome

logger = logging.getLogger("gateway.jobs")

BASE = "/v1/inhouse/jobs"
BODY_SLACK = 8 * 1024  # the envelope around a 256 KB payload

Handler = Callable[[AsyncConnection[Any], str], Awaitable[tuple[int, dict[str, Any]]]]


def jobs_error_body(error: GatewayError) -> bytes:
    """The jobs API's envelope for every refusal (its own and admission's): ``code`` and
    ``message``, and the ``quota`` when the error carries one."""
    body: dict[str, Any] = {"ok": False, "error": {"code": error.code, "message": error.message}}
    if isinstance(error.details, dict) and "quota" in error.details:
        body["quota"] = error.details["quota"]
    return orjson.dumps(body)


async def _body(request: Request) -> bytes:
    limit = request.app.state.gw.settings.max_body_bytes + BODY_SLACK
    try:
        return await read_body(request, limit)
    except BodyTooLarge:
        raise invalid("PAYLOAD_TOO_LARGE", "the request body exceeds 256 KB", 413) from None
    except ClientDisconnect:
        raise invalid("VALIDATION_ERROR", "the request body was not received") from None


async def _serve(request: Request, handler: Handler) -> Response:
    started = arrival_time(request)
    request_id = new_request_id()
    state = request.app.state.gw
    try:
        key, _session = credentials_from_headers(request.headers)
    except GatewayError as exc:
        return error_response(exc, envelope=jobs_error_body)

    async def work(conn: AsyncConnection[Any], admission: Admission, out: Outcome) -> None:
        if admission.principal.key_type != "server":
            raise invalid("INSUFFICIENT_SCOPES", "the jobs API needs a server key", status=403)
        status, payload = await handler(conn, admission.project_id)
        out.status = status
        out.body = orjson.dumps({"ok": True, **payload})

    try:
        runtime, key_hash = await state.cells.route(key)
    except GatewayError as error:
        out = Outcome(status=200, body=b"").refuse(error, jobs_error_body)
    else:
        out = await runtime.pipeline.admitted(
            key, cost=1, work=work, envelope=jobs_error_body, key_hash=key_hash
        )
    # what the request log records: the HTTP method and the path below /v1/inhouse
    out.operation = request.method
    out.path = request.url.path.removeprefix("/v1/inhouse")[:200]
    return Response(
        out.body,
        status_code=out.status,
        media_type=JSON,
        headers=observe(request, "jobs", out, request_id, started),
    )


async def enqueue(request: Request) -> Response:
    try:
        body = await _body(request)
    except GatewayError as exc:
        return error_response(exc, envelope=jobs_error_body)
    runtime = request.app.state.gw.extras.get("jobs")

    async def handler(conn: AsyncConnection[Any], project_id: str) -> tuple[int, dict[str, Any]]:
        req = rules.parse_enqueue(body)
        outcome, job, quota = await store.enqueue(conn, project_id, req)
        if outcome == "created" and runtime is not None:
            runtime.count("enqueued")
        return (201 if outcome == "created" else 200), {"data": {"job": job}, "quota": quota}

    return await _serve(request, handler)


async def list_jobs(request: Request) -> Response:
    params = dict(request.query_params)

    async def handler(conn: AsyncConnection[Any], project_id: str) -> tuple[int, dict[str, Any]]:
        q = rules.parse_list(params)
        jobs, total = await store.list_jobs(conn, project_id, q)
        return 200, {
            "data": {"jobs": jobs, "total": total, "hasMore": q.offset + len(jobs) < total}
        }

    return await _serve(request, handler)


async def get_job(request: Request) -> Response:
    raw_id = request.path_params["job_id"]

    async def handler(conn: AsyncConnection[Any], project_id: str) -> tuple[int, dict[str, Any]]:
        job = await store.get_job(conn, project_id, rules.check_uuid(raw_id))
        if job is None:
            raise invalid("NOT_FOUND", "no such job", 404)
        return 200, {"data": {"job": job}}

    return await _serve(request, handler)


def _job_action(action: Callable[..., Awaitable[dict[str, Any]]]) -> Callable[..., Any]:
    async def route(request: Request) -> Response:
        raw_id = request.path_params["job_id"]

        async def handler(
            conn: AsyncConnection[Any], project_id: str
        ) -> tuple[int, dict[str, Any]]:
            job = await action(conn, project_id, rules.check_uuid(raw_id))
            return 200, {"data": {"job": job}}

        return await _serve(request, handler)

    return route


async def create_schedule(request: Request) -> Response:
    try:
        body = await _body(request)
    except GatewayError as exc:
        return error_response(exc, envelope=jobs_error_body)

    async def handler(conn: AsyncConnection[Any], project_id: str) -> tuple[int, dict[str, Any]]:
        schedule = await schedules.create_schedule(
            conn, project_id, rules.parse_schedule(body, partial=False)
        )
        return 201, {"data": {"schedule": schedule}}

    return await _serve(request, handler)


async def list_schedules(request: Request) -> Response:
    async def handler(conn: AsyncConnection[Any], project_id: str) -> tuple[int, dict[str, Any]]:
        listed = await schedules.list_schedules(conn, project_id)
        return 200, {"data": {"schedules": listed}}

    return await _serve(request, handler)


def _schedule_id(request: Request) -> str:
    try:
        return rules.check_uuid(request.path_params["schedule_id"])
    except GatewayError:
        raise invalid("NOT_FOUND", "no such schedule", 404) from None


async def update_schedule(request: Request) -> Response:
    try:
        body = await _body(request)
    except GatewayError as exc:
        return error_response(exc, envelope=jobs_error_body)

    async def handler(conn: AsyncConnection[Any], project_id: str) -> tuple[int, dict[str, Any]]:
        schedule_id = _schedule_id(request)
        change = rules.parse_schedule(body, partial=True)
        schedule = await schedules.update_schedule(conn, project_id, schedule_id, change)
        return 200, {"data": {"schedule": schedule}}

    return await _serve(request, handler)


async def delete_schedule(request: Request) -> Response:
    async def handler(conn: AsyncConnection[Any], project_id: str) -> tuple[int, dict[str, Any]]:
        await schedules.delete_schedule(conn, project_id, _schedule_id(request))
        return 200, {"data": {"deleted": True}}

    return await _serve(request, handler)


def build_routes() -> list[Route]:
    return [
        Route(f"{BASE}/schedules", create_schedule, methods=["POST"]),
        Route(f"{BASE}/schedules", list_schedules, methods=["GET"]),
        Route(f"{BASE}/schedules/{{schedule_id}}", update_schedule, methods=["PATCH"]),
        Route(f"{BASE}/schedules/{{schedule_id}}", delete_schedule, methods=["DELETE"]),
        Route(BASE, enqueue, methods=["POST"]),
        Route(BASE, list_jobs, methods=["GET"]),
        Route(f"{BASE}/{{job_id}}", get_job, methods=["GET"]),
        Route(f"{BASE}/{{job_id}}/cancel", _job_action(store.cancel_job), methods=["POST"]),
        Route(f"{BASE}/{{job_id}}/retry", _job_action(store.retry_job), methods=["POST"]),
    ]
