"""The data routes' answers (``POST /query``, ``POST /batch``, ``GET /schema``) built
straight from the ASGI scope: no Starlette ``Request``, ``Headers`` or ``Response``.

A data request's answer is a status, the pipeline's body and a list of raw header
pairs. Building it through Starlette cost a ``Request``, a ``Headers`` object scanned
once per header read (the key, the session, the body's length, ``X-Forwarded-For``,
``User-Agent``), the body's async generator, a ``Response`` that encodes every header
again, and a scan of those headers for the request and project ids: the HTTP layers of
a select cost 64 to 80 µs in-process that way, 49 to 59 µs this way (docs/performance.md,
"What each part of the design saves"). The request's headers are read in one pass
(``wanted_headers``) and the answer's are encoded once, as Starlette would have encoded
them (same names, values, order).

``Lean.serve`` sends a ``DataAnswer`` as is, or through the stack's compression when
it is large; the Starlette route functions (the middleware stack's way in, e.g. ``HEAD
/schema``) wrap the same answer in a ``Response`` (``to_response``), so both ways give
the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope

from gateway.auth.bearer import credentials_from_headers
from gateway.errors import GatewayError
from gateway.http.cors import RawHeaders
from gateway.http.endpoint import BodyTooLarge, new_request_id, read_limited, record
from gateway.ops.observe import arrived_at
from gateway.query.envelope import error_body
from gateway.query.pipeline import Outcome

JSON_TYPE = (b"content-type", b"application/json")

# the request headers a data route reads (as ``credentials_from_headers``, the request log
# and CORS read them), decoded as Starlette's ``Headers`` does
WANTED_HEADERS = {
    name: name.decode("latin-1")
    for name in (
        b"authorization",
        b"x-api-key",
        b"x-forwarded-for",
        b"user-agent",
        b"origin",
        b"content-length",
    )
}


def wanted_headers(scope: Scope) -> dict[str, str]:
    """The first value of each header in ``WANTED_HEADERS`` (every line of
    X-Forwarded-For, joined: the real-IP rule reads the whole chain's right end), in one
    pass over the raw list."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        text = WANTED_HEADERS.get(name)
        if text is None:
            continue
        if text not in found:
            found[text] = value.decode("latin-1")
        elif text == "x-forwarded-for":
            found[text] += ", " + value.decode("latin-1")
    return found


@dataclass(slots=True)
class DataAnswer:
    """What a data route sends: ``raw_headers`` lower-case, as ``Response`` encodes them.
    ``request_id`` and ``project_id`` are the answer's ``X-Request-Id`` and
    ``X-Project-Id`` (the access line's id; whose bandwidth the body counts against)."""

    status: int
    body: bytes
    raw_headers: RawHeaders
    origin: str | None = None
    request_id: str | None = None
    project_id: str | None = None


def _answer(
    status: int, body: bytes, headers: dict[str, str], wanted: dict[str, str]
) -> DataAnswer:
    """``headers`` encoded as ``Response(body, status, media_type=JSON, headers=...)``
    does: each header lower-cased, then the length and the type (never among the
    ``headers`` a data route sets)."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    raw.append(JSON_TYPE)
    return DataAnswer(
        status,
        body,
        raw,
        wanted.get("origin"),
        headers.get("X-Request-Id"),
        headers.get("X-Project-Id"),
    )


def _observed(
    scope: Scope,
    kind: str,
    outcome: Outcome,
    request_id: str,
    started: float,
    wanted: dict[str, str],
) -> DataAnswer:
    client = scope.get("client")
    headers = record(
        scope,
        kind,
        outcome,
        request_id,
        started,
        peer=client[0] if client else None,
        forwarded_for=wanted.get("x-forwarded-for"),
        user_agent=wanted.get("user-agent"),
    )
    return _answer(outcome.status, outcome.body, headers, wanted)


async def answer_query(scope: Scope, receive: Receive, *, batch: bool) -> DataAnswer:
    """``POST /query`` (``batch=False``) and ``POST /batch``."""
    started = arrived_at(scope)
    request_id = new_request_id()
    state = scope["app"].state.gw
    wanted = wanted_headers(scope)
    limit = state.settings.max_body_bytes
    try:
        body = await read_limited(receive, limit, wanted.get("content-length"))
    except ClientDisconnect:
        return DataAnswer(400, b"", [(b"content-length", b"0")], wanted.get("origin"))
    except BodyTooLarge:
        error = GatewayError("PAYLOAD_TOO_LARGE", f"the request body exceeds {limit // 1024} KB")
        return _answer(
            error.status, error_body(error), {"X-Request-Id": request_id, **error.headers}, wanted
        )
    key, session = credentials_from_headers(wanted)
    try:
        runtime, key_hash = await state.cells.route(key)
    except GatewayError as error:
        outcome = Outcome(status=200, body=b"").refuse(error)
    else:
        run = runtime.pipeline.batch if batch else runtime.pipeline.query
        outcome = await run(key, body, session, key_hash)
    return _observed(scope, "batch" if batch else "query", outcome, request_id, started, wanted)


async def answer_schema(scope: Scope, receive: Receive) -> DataAnswer:
    """``GET /schema``."""
    started = arrived_at(scope)
    wanted = wanted_headers(scope)
    key, session = credentials_from_headers(wanted)
    try:
        runtime, key_hash = await scope["app"].state.gw.cells.route(key)
    except GatewayError as error:
        outcome = Outcome(status=200, body=b"").refuse(error)
    else:
        outcome = await runtime.pipeline.schema(key, session, key_hash)
    return _observed(scope, "schema", outcome, new_request_id(), started, wanted)


def to_response(answer: DataAnswer) -> Response:
    """The same answer as a Starlette ``Response`` (the middleware stack's way, and
    compression of a large answer on the lean path)."""
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = list(answer.raw_headers)
    return response
