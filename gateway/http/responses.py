"""Starlette responses carrying the contract's body (rendered by ``query.envelope``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.responses import Response

from gateway.errors import GatewayError
from gateway.query.envelope import error_body

JSON = "application/json"


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def error_response(
    error: GatewayError,
    headers: Mapping[str, str] | None = None,
    envelope: Callable[[GatewayError], bytes] = error_body,
) -> Response:
    """A refusal answered before the pipeline (an oversized body, bad headers), in the
    surface's ``envelope`` (the data API's by default; see ``Outcome.refuse``)."""
    merged = dict(headers or {})
    merged.update(error.headers)
    return Response(envelope(error), status_code=error.status, media_type=JSON, headers=merged)


def forwarded_for(headers: Headers) -> str | None:
    """Every ``X-Forwarded-For`` line joined in order: a proxy may append its own line
    rather than extend the client's, and the real-IP rule reads the chain from its right
    end, so reading only the first line would hand the client's own words to it."""
    lines = headers.getlist("x-forwarded-for")
    return ", ".join(lines) if lines else None
