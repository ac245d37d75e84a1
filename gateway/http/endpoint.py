"""What every HTTP endpoint does around its work: when the request arrived, its id, its
body read under a limit, and its outcome recorded once.

The data routes (``routes.py``), the jobs API (``jobs.py``) and the admin API
(``admin.py``) all use these, so they live apart from any one of them: a module of
endpoints importing another module of endpoints for its helpers is how private names
ended up shared.
"""

from __future__ import annotations

import logging
import os
import time

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from gateway.errors import GatewayError
from gateway.http.responses import error_response, forwarded_for
from gateway.ops.observe import arrived_at
from gateway.query.pipeline import Outcome

logger = logging.getLogger("gateway")


def arrival_time(request: Request) -> float:
    """``arrived_at`` for a Starlette request."""
    return arrived_at(request.scope)


class _Entropy:
    """Random bytes for request ids, read from the OS 4 KiB at a time: ``uuid.uuid4()``
    makes one ``getrandom`` call and a ``UUID`` object per id (5.6 µs against 2.1 µs here,
    measured with timeit on the development machine)."""

    SIZE = 4096

    def __init__(self) -> None:
        self.buffer = b""
        self.position = 0

    def reset(self) -> None:
        """After a fork: a child must never hand out its parent's next ids."""
        self.buffer, self.position = b"", 0


_entropy = _Entropy()
os.register_at_fork(after_in_child=_entropy.reset)


def new_request_id() -> str:
    """32 hex digits of a random version-4 UUID, exactly the shape of
    ``uuid.uuid4().hex`` (version and variant bits set)."""
    entropy = _entropy
    position = entropy.position
    if position + 16 > len(entropy.buffer):
        entropy.buffer, position = os.urandom(_Entropy.SIZE), 0
    raw = bytearray(entropy.buffer[position : position + 16])
    entropy.position = position + 16
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading them all. Read from
    the request's ``receive``: call it before anything else reads the body."""
    return await read_limited(request.receive, limit, request.headers.get("content-length"))


async def read_limited(receive: Receive, limit: int, declared: str | None) -> bytes:
    """The body from ``receive``: ``BodyTooLarge`` past ``limit`` bytes (a declared
    ``content-length`` over it is not read at all), ``ClientDisconnect`` when the client
    went away first (Starlette's ``Request.stream`` rule)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif kind == "http.disconnect":
            raise ClientDisconnect


def observe(
    request: Request, kind: str, outcome: Outcome, request_id: str, started: float
) -> dict[str, str]:
    """Record the outcome (metrics, request log, access line); the response's headers."""
    client = request.client
    return record(
        request.scope,
        kind,
        outcome,
        request_id,
        started,
        peer=client.host if client else None,
        forwarded_for=forwarded_for(request.headers),
        user_agent=request.headers.get("user-agent"),
    )


def record(
    scope: Scope,
    kind: str,
    outcome: Outcome,
    request_id: str,
    started: float,
    *,
    peer: str | None,
    forwarded_for: str | None,
    user_agent: str | None,
) -> dict[str, str]:
    """``observe`` from the request's facts (the data routes read them from the scope in
    one pass: ``gateway/http/data.py``): the outcome recorded, the answer's headers."""
    duration_ms = (time.perf_counter() - started) * 1000
    headers = dict(outcome.headers)
    headers["X-Request-Id"] = request_id
    headers["X-Gateway-Duration-Ms"] = f"{duration_ms:.2f}"
    observability = scope["app"].state.gw.extras.get("observability")
    if observability is not None:
        observability.record_outcome(
            kind,
            outcome,
            request_id=request_id,
            duration_ms=duration_ms,
            peer=peer,
            forwarded_for=forwarded_for,
            user_agent=user_agent,
        )
        if observability.access_json:  # extra fields for the JSON access line
            scope.setdefault("state", {})["gateway_log"] = {
                "request_id": request_id,
                "project_id": outcome.project_id,
                "operation": outcome.operation,
                "table": outcome.table,
                "error_code": outcome.error_code,
            }
    return headers


def http_error(exc: HTTPException) -> Response:
    """Starlette's own refusals (404 unknown route, 405 wrong method) in the contract's
    error body."""
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "INVALID_QUERY")
    return error_response(GatewayError(code, str(exc.detail), status=exc.status_code))


def unexpected_error(request: Request, exc: Exception) -> Response:
    """An exception no route handled: logged with its traceback here, answered 500
    ``INTERNAL_ERROR`` without one."""
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(GatewayError("INTERNAL_ERROR", "internal error", status=500))
