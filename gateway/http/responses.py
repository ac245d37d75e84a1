"""Rendering the contract's ``{data, error, count, status}`` body, fast.

Row data arrives from PostgreSQL as JSON text already (``json_agg``), so it is spliced
into the body as bytes instead of being parsed and serialized again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from gateway.errors import GatewayError

JSON = "application/json"


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps({"data": None, "error": error.to_error(), "status": error.status})


def error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> Response:
    merged = dict(headers or {})
    merged.update(error.headers)
    return Response(error_body(error), status_code=error.status, media_type=JSON, headers=merged)


def data_body(data_json: str | bytes | None, count: int | None, status: int = 200) -> bytes:
    """``{"data": <raw json>, "error": null, "count": n, "status": s}`` without re-encoding."""
    if data_json is None:
        data = b"null"
    elif isinstance(data_json, str):
        data = data_json.encode()
    else:
        data = data_json
    tail = b"" if count is None else b',"count":' + str(count).encode()
    return (
        b'{"data":' + data + b',"error":null' + tail + b',"status":' + str(status).encode() + b"}"
    )
