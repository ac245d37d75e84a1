"""The contract's ``{data, error, count, status}`` body, rendered fast.

Row data arrives from PostgreSQL as JSON text already (``json_agg``), so it is spliced
into the body as bytes instead of being parsed and serialized again.
"""

from __future__ import annotations

import orjson

from gateway.errors import GatewayError


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps({"data": None, "error": error.to_error(), "status": error.status})


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
