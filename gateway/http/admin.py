"""``/v1/admin``: the admin API's HTTP face. Signature, nonce, body model, route call.

One handler serves every ``AdminRoute`` (``gateway/control/admin.py``):

1. read the raw body (≤ ``max_body_bytes``, else 413);
2. verify the HMAC v2 signature against every configured secret (``control.signing``)
   and claim the nonce cluster-wide with one insert (``control.nonces``) — any failure
   is the same 401, the reason goes to the log only;
3. validate the query and body with the route's pydantic models (400 naming the field);
4. run the route's call — provisioning, on a pooled connection in a worker thread;
5. answer ``{"ok": true, "data": …}``; refusals ``{"ok": false, "error": {...}}``.

Without ``GATEWAY_ADMIN_HMAC_SECRET`` no admin route is mounted at all: every path under
``/v1/admin`` is an ordinary 404, and start-up logs one line saying so.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import psycopg
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.cells.admin_calls import placement, record_placement
from gateway.cells.directory import HOME
from gateway.control import nonces, signing
from gateway.control.admin import ROUTES
from gateway.control.admin_route import PREFIX, AdminCall, AdminRoute
from gateway.control.errors import ConflictError, NotFoundError, ProvisioningError
from gateway.control.tabledef import DefinitionError
from gateway.db.bridge import run_sync
from gateway.db.pool import acquire
from gateway.errors import GatewayError
from gateway.http.endpoint import BodyTooLarge, read_body
from gateway.settings import Settings

logger = logging.getLogger("gateway.admin")

JSON = "application/json"
NO_STORE = {"Cache-Control": "no-store"}
UNAUTHORIZED = ("UNAUTHORIZED", "the request's signature is missing or not valid")


def _answer(status: int, payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=NO_STORE)


def ok(data: Any, status: int = 200) -> Response:
    return _answer(status, {"ok": True, "data": data})


def refuse(
    status: int, code: str, message: str, *, field: str | None = None, details: Any = None
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    if details is not None:
        error["details"] = details
    return _answer(status, {"ok": False, "error": error})


def _loc(loc: tuple[Any, ...]) -> str:
    """``("columns", 0, "type")`` → ``columns[0].type``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _validation_refusal(exc: ValidationError, where: str) -> Response:
    errors = [
        {"field": _loc(e["loc"]) or where, "message": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ][:20]
    first = errors[0] if errors else {"field": where, "message": "invalid"}
    return refuse(
        400,
        "VALIDATION_ERROR",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        details=errors,
    )


def _parse(model: type[BaseModel] | None, raw: bytes) -> BaseModel | None:
    if model is None:
        if raw.strip() not in (b"", b"{}"):
            raise ValueError("this route takes no body")
        return None
    return model.model_validate_json(raw or b"")


async def _authenticate(request: Request, settings: Settings, body: bytes) -> None:
    """Raise ``SignatureError`` unless the signature holds and the nonce is new."""
    # the path as sent (still percent-encoded), as the original signs and checks it
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    verified = signing.verify(
        settings.admin_hmac_secrets,
        request.method,
        path,
        request.url.query,
        {k.lower(): v for k, v in request.headers.items()},
        body,
    )
    pool = request.app.state.gw.pool
    async with acquire(pool) as conn:
        first_use = await nonces.claim(conn, verified.nonce, verified.timestamp)
    if not first_use:
        raise signing.SignatureError("nonce already used")


def _handler(route: AdminRoute, settings: Settings) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            body = await read_body(request, settings.max_body_bytes)
        except BodyTooLarge:
            kb = settings.max_body_bytes // 1024
            return refuse(413, "PAYLOAD_TOO_LARGE", f"the request body exceeds {kb} KB")
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            await _authenticate(request, settings, body)
        except signing.SignatureError as exc:
            logger.warning(
                "admin request refused: %s %s: %s", request.method, request.url.path, exc.reason
            )
            return refuse(401, *UNAUTHORIZED)
        except GatewayError as exc:
            return refuse(exc.status, exc.code, exc.message)
        try:
            query = route.query.model_validate(dict(request.query_params)) if route.query else None
        except ValidationError as exc:
            return _validation_refusal(exc, "query")
        try:
            parsed = _parse(route.body, body)
        except ValidationError as exc:
            return _validation_refusal(exc, "body")
        except ValueError as exc:
            return refuse(400, "VALIDATION_ERROR", str(exc), field="body")
        state = request.app.state.gw
        try:
            cells = state.cells
            where = await placement(state.pool, cells.single, route, request.path_params, parsed)
            pool = state.pool if where.cell == HOME else cells.runtime_named(where.cell).pool
            call = AdminCall(dict(request.path_params), parsed, query, pool, cell=where.cell)
            if route.is_async:
                data = await route.call(call)  # type: ignore[misc]
            else:
                # calls that change things may create schemas and tables: their
                # connection is not kept (gateway/db/disposable.py)
                data = await run_sync(pool, route.call, call, discard=route.method != "GET")
            if where.cell != HOME:
                await record_placement(state.pool, route, where, data)
        except NotFoundError as exc:
            return refuse(404, "NOT_FOUND", str(exc), field=exc.field)
        except ConflictError as exc:
            return refuse(409, "CONFLICT", str(exc), field=exc.field)
        except (ProvisioningError, DefinitionError) as exc:
            return refuse(400, "VALIDATION_ERROR", str(exc), field=getattr(exc, "field", None))
        except GatewayError as exc:
            return refuse(exc.status, exc.code, exc.message)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            return refuse(
                503, "SERVICE_UNAVAILABLE", "the object is busy (locked by queries); retry shortly"
            )
        except psycopg.OperationalError:  # a cell's database can't be reached
            return refuse(503, "SERVICE_UNAVAILABLE", "a database is unavailable; retry shortly")
        except Exception:
            logger.exception("admin %s %s failed", route.method, route.full_path)
            return refuse(500, "INTERNAL_ERROR", "internal error")
        if route.raw:
            return _answer(route.status, data)
        return ok(data, route.status)

    endpoint.__name__ = route.operation_id or "admin"
    return endpoint


def build_admin_routes(settings: Settings) -> list[Route]:
    """The admin routes, or none (and a start-up line) when no secret is configured."""
    if not settings.admin_hmac_secrets:
        logger.warning(
            "admin API off: GATEWAY_ADMIN_HMAC_SECRET is not set, %s/* answers 404", PREFIX
        )
        return []
    by_path: dict[str, list[AdminRoute]] = {}
    for route in ROUTES:
        by_path.setdefault(route.full_path, []).append(route)
    starlette_routes = []
    for path, routes in by_path.items():
        handlers = {r.method: _handler(r, settings) for r in routes}

        async def dispatch(request: Request, handlers: dict[str, Any] = handlers) -> Response:
            handler = handlers.get(request.method) or handlers["GET"]  # HEAD → GET
            return await handler(request)

        starlette_routes.append(Route(path, dispatch, methods=list(handlers)))
    logger.info("admin API on at %s (%d routes)", PREFIX, len(ROUTES))
    return starlette_routes
