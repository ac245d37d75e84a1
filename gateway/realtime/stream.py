"""``GET /v1/inhouse/db/realtime``: a subscription as ``text/event-stream``.

The order of checks: a server key in the URL is refused before any database work (400
``SECRET_KEY_IN_URL``); then the parameters are parsed (table, filters, cursor); then,
through ``Pipeline.admitted`` like ``/query``: the local deny, admission (one request),
the catalog, and table and filter permissions with the same codes as ``/query``; then
the hub registers the stream (429 ``TOO_MANY_SUBSCRIPTIONS``). The route records the
opening in the request log (``REALTIME``) like any other request.

The response is a small ASGI app of its own rather than Starlette's StreamingResponse:
every ``send`` has a timeout (a client that stops reading can't hold a stream forever),
and a disconnect ends the stream at once whatever the ASGI spec version (uvicorn reports
2.3, under which a send to a closed connection doesn't fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import Collection
from typing import Any

import orjson
import psycopg
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.admission.decision import Admission
from gateway.auth.bearer import credentials_from_headers
from gateway.auth.keys import hash_key, looks_like_secret
from gateway.auth.tokens import token_hash
from gateway.errors import GatewayError, service_unavailable
from gateway.metadata.catalog import Principal, ProjectCatalog, TableInfo
from gateway.query import contract, permissions
from gateway.query.pipeline import Outcome
from gateway.realtime.events import parse_cursor
from gateway.realtime.hub import RealtimeHub
from gateway.realtime.sse import sse_stream
from gateway.realtime.subscription import Subscription
from gateway.realtime.tickets import (
    TICKET_TTL_S,
    cell_ticket,
    consume_ticket,
    create_ticket,
    invalid_ticket,
    split_ticket,
)

logger = logging.getLogger("gateway.realtime")

MAX_FILTERS_PARAM = 16 * 1024
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


class SSEResponse(Response):
    """Streams a subscription; per-send timeout; ends on disconnect, overflow or shutdown."""

    def __init__(
        self,
        sub: Subscription,
        *,
        headers: dict[str, str],
        heartbeat_s: float,
        send_timeout_s: float,
    ) -> None:
        self.sub = sub
        self.heartbeat_s = heartbeat_s
        self.send_timeout_s = send_timeout_s
        self.status_code = 200
        self.background = None
        self.media_type = "text/event-stream"
        self.init_headers({**SSE_HEADERS, **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = sse_stream(self.sub, self.heartbeat_s)
        timeout = self.send_timeout_s

        async def pump() -> None:
            async with asyncio.timeout(timeout):
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
            async for chunk in stream:
                async with asyncio.timeout(timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            async with asyncio.timeout(timeout):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        pumping = asyncio.create_task(pump())
        watching = asyncio.create_task(watch())
        try:
            await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, watching):
                task.cancel()
            for task in (pumping, watching):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await stream.aclose()
            self.sub.close()
        if pumping.done() and not pumping.cancelled():
            exc = pumping.exception()
            if isinstance(exc, TimeoutError):
                # the client stopped reading: drop the connection; it resumes from its id
                self.sub.hub.stats.send_timeouts += 1
                logger.info("realtime: closing a stream whose client stopped reading")
            elif exc is not None and not isinstance(exc, OSError):
                logger.warning("realtime: stream failed: %r", exc)


def _readable_fn(
    hub: RealtimeHub,
    project_id: str,
    table: str,
    principal: Principal,
    first: ProjectCatalog,
    owner: str | None = None,
) -> Any:
    """Readable columns for the current catalog, memoized per catalog object.

    ``owner``: the user the stream was opened for (owner tables); if the table's row
    access changes under the stream so that it would need another owner filter, the
    stream ends with an error event (the client reconnects and gets the new rule).
    """
    memo: dict[str, Any] = {"table": None, "columns": None}

    def columns() -> Collection[str]:
        catalog = hub.catalog(project_id) or first
        info = catalog.table(table)
        if info is None:
            raise GatewayError("TABLE_NOT_FOUND", f"table '{table}' does not exist")
        if memo["table"] is not info:
            if permissions.row_owner(info, principal, write=False) != owner:
                raise GatewayError(
                    "ROW_ACCESS_CHANGED", "the table's row access changed: reconnect"
                )
            memo["table"] = info
            memo["columns"] = frozenset(permissions.readable_columns(info, principal))
        result: Collection[str] = memo["columns"]
        return result

    return columns


def _parse_request(request: Request) -> tuple[str, Any, Any]:
    params = request.query_params
    table = params.get("table")
    if not table:
        raise GatewayError(
            "INVALID_QUERY", "table: the 'table' query parameter is required",
            details={"field": "table"},
        )  # fmt: skip
    raw_filters = params.get("filters")
    filters: tuple[contract.Filter, ...] = ()
    if raw_filters:
        if len(raw_filters) > MAX_FILTERS_PARAM:
            raise GatewayError("INVALID_QUERY", "filters: too long", details={"field": "filters"})
        try:
            decoded = orjson.loads(raw_filters)
        except orjson.JSONDecodeError:
            raise GatewayError(
                "INVALID_QUERY", "filters: must be a JSON array of filters",
                details={"field": "filters"},
            ) from None  # fmt: skip
        filters = contract.parse_filters(decoded, "filters")
    # a browser's reconnect sends Last-Event-ID; it wins over the ?since= of the URL
    raw_cursor = request.headers.get("last-event-id") or params.get("since")
    since = parse_cursor(raw_cursor) if raw_cursor else None
    return table, filters, since


def _check_table(catalog: ProjectCatalog, table: str, principal: Principal) -> TableInfo:
    info = permissions.resolve_table(catalog, table, principal, write=False)
    if not info.realtime:
        raise GatewayError(
            "INVALID_TABLE",
            f"table '{table}' does not have realtime enabled",
            details={"table": table},
            hint=f"gateway table realtime <project> {table} --enable",
        )
    return info


# query parameters that would put a session token in a URL: refused outright
SESSION_URL_PARAMS = ("session", "token", "access_token", "session_token", "bearer")
SESSION_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def _session_in_url(request: Request) -> GatewayError | None:
    params = request.query_params
    url_key = params.get("apikey")
    named = [p for p in SESSION_URL_PARAMS if p in params]
    # a value in ?apikey= shaped like a session token (43 base64url characters)
    if named or (url_key is not None and SESSION_TOKEN_SHAPE.fullmatch(url_key)):
        return GatewayError(
            "SESSION_TOKEN_IN_URL",
            "session tokens never go in a URL: ask POST /v1/inhouse/db/realtime/ticket "
            "(key and session in headers) and pass ?ticket=",
            status=400,
        )
    return None


async def open_stream(request: Request) -> tuple[Outcome, Subscription | None]:
    """Every check, then the subscription; the outcome is the refusal when there is none.

    The route records the outcome in the request log like any other request
    (``REALTIME``, the table), then answers with ``stream_response``. A ``?ticket=``
    (single use, from ``realtime_ticket``) stands for the key and session headers that
    ``EventSource`` can't send.
    """
    state = request.app.state.gw
    pipeline = state.pipeline
    runtime = None
    out = Outcome(status=200, body=b"", operation="REALTIME")
    url_key = request.query_params.get("apikey")
    # before anything touches the database: a session or a secret in a URL is refused
    refused = _session_in_url(request)
    if refused is None and url_key is not None and looks_like_secret(url_key):
        refused = GatewayError(
            "SECRET_KEY_IN_URL",
            "only public keys may be passed in the URL; send server keys in the "
            "Authorization header",
        )
    if refused is not None:
        return pipeline.failed(out, refused), None
    key, session = credentials_from_headers(request.headers)
    key = key or url_key
    ticket = request.query_params.get("ticket")
    routed_hash: str | None = None  # the key's hash when routing computed it
    try:
        # the project's cell: a ticket names it (tickets of home carry no cell), else the key
        cell, ticket = split_ticket(ticket)
        if cell is not None:
            if cell not in state.cells.runtimes:
                raise invalid_ticket()
            runtime = state.cells.runtime_named(cell)
        else:
            runtime, routed_hash = await state.cells.route(key)
        pipeline = runtime.pipeline
        table, filters, since = _parse_request(request)
        if ticket is not None:
            hashes = await _redeem(pipeline, ticket, key, routed_hash)
        else:
            hashes = None
    except GatewayError as error:
        return pipeline.failed(out, error), None
    except psycopg.OperationalError:
        return pipeline.failed(out, service_unavailable()), None
    # each hashed once: a ticket carries both; else the route's hash, or hashed here
    if hashes is not None:
        key_hash, session_hash = hashes
    else:
        key_hash = routed_hash or (hash_key(key) if key else None)
        session_hash = token_hash(session) if session else None
    opened: dict[str, Any] = {}

    async def work(conn: psycopg.AsyncConnection[Any], admission: Admission, o: Outcome) -> None:
        # the same way in as /query (local deny, admission, catalog): opening a stream
        # costs one request; events cost nothing
        o.table = table
        catalog = await pipeline.catalog(conn, admission.project_id)
        info = _check_table(catalog, table, admission.principal)
        for i, f in enumerate(filters):
            where = f"filters[{i}].column"
            permissions.require_readable(info, f.column, admission.principal, where)
        # owner tables: a public key's stream carries only its session user's rows
        owner = permissions.row_owner(info, admission.principal, write=False)
        opened.update(admission=admission, catalog=catalog, info=info, owner=owner)

    out = await pipeline.admitted(
        key,
        cost=1,
        work=work,
        key_hash=key_hash,
        session_hash=session_hash,
        local_deny=hashes is None,
    )
    out.operation = "REALTIME"
    if out.error_code is not None:
        return out, None
    admission, catalog, info = opened["admission"], opened["catalog"], opened["info"]
    owner = opened["owner"]
    hub: RealtimeHub = runtime.realtime
    assert key_hash is not None  # admitted: the pipeline refused a missing key
    stream_key_hash = key_hash

    async def revalidate() -> None:
        # the key (and the session) is checked again now and then (without counting a
        # request): a revoked or expired key, a suspended project, or a signed-out
        # session ends the stream
        async with pipeline.connection() as conn:
            await pipeline.admitter.recheck(conn, stream_key_hash, session_hash)

    try:
        sub = await hub.subscribe(
            admission.project_id,
            table,
            filters=filters,
            column_types={c.name: c.data_type for c in info.columns},
            columns=_readable_fn(
                hub, admission.project_id, table, admission.principal, catalog, owner
            ),
            since=since,
            catalog=catalog,
            revalidate=revalidate,
            owner=owner,
        )
    except GatewayError as error:
        return pipeline.failed(out, error), None
    return out, sub


async def _redeem(
    pipeline: Any, ticket: str, key: str | None, key_hash: str | None
) -> tuple[str, str | None]:
    """A ticket, consumed (single use on every instance): the key and session hashes it
    was issued for. A key sent beside it must be the same key (``key_hash``: its hash
    when routing computed it)."""
    async with pipeline.connection() as conn:
        used = await consume_ticket(conn, ticket)
    if key is not None and not hmac.compare_digest(key_hash or hash_key(key), used.key_hash):
        raise GatewayError("INVALID_API_KEY", "the ticket was issued for another key", status=401)
    return used.key_hash, used.session_hash


def stream_response(request: Request, sub: Subscription, headers: dict[str, str]) -> Response:
    """The open subscription as ``text/event-stream``."""
    settings = request.app.state.gw.settings
    return SSEResponse(
        sub,
        headers=headers,
        heartbeat_s=settings.realtime_heartbeat_s,
        send_timeout_s=settings.realtime_send_timeout_s,
    )


async def issue_ticket(request: Request) -> Outcome:
    """``POST /v1/inhouse/db/realtime/ticket``: key and session in headers → a single-use
    ticket for the stream's URL (gateway/realtime/tickets.py). Costs one request, and goes
    the same way in as /query (local deny, admission with the session)."""
    key, session = credentials_from_headers(request.headers)
    try:
        runtime, routed_hash = await request.app.state.gw.cells.route(key)
    except GatewayError as error:
        return Outcome(status=200, body=b"", operation="TICKET").refuse(error)
    pipeline = runtime.pipeline
    # hashed once: for routing (several cells), the local deny and the ticket's row
    key_hash = routed_hash or (hash_key(key) if key else None)

    # hashed once too: for the admission and the ticket's row
    session_hash = token_hash(session) if session is not None else None

    async def work(conn: psycopg.AsyncConnection[Any], admission: Admission, o: Outcome) -> None:
        assert key_hash is not None  # admitted: the pipeline refused a missing key
        ticket, expires_at = await create_ticket(conn, admission.project_id, key_hash, session_hash)
        data = {
            "ticket": cell_ticket(runtime.name, ticket),
            "expiresAt": expires_at.isoformat().replace("+00:00", "Z"),
            "expiresIn": TICKET_TTL_S,
        }
        o.body = orjson.dumps({"data": data, "error": None, "status": 200})

    out = await pipeline.admitted(
        key, cost=1, work=work, key_hash=key_hash, session_hash=session_hash
    )
    out.operation = "TICKET"
    out.headers["Cache-Control"] = "no-store"
    return out
