"""The lean path's pieces against what they replace: ``GatewayCORS.decorate`` against
Starlette's own ``CORSMiddleware.send``, and the request ids against ``uuid4().hex``."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware

from gateway.http.cors import GatewayCORS
from gateway.http.endpoint import new_request_id

CONFIGS: list[dict[str, Any]] = [
    {"allow_origins": ["*"]},
    {"allow_origins": ["*"], "allow_credentials": True},
    {"allow_origins": ["https://app.example"], "expose_headers": ["X-Request-Id", "RateLimit"]},
    {"allow_origins": ["https://app.example"], "allow_origin_regex": r"https://.*\.test"},
    {"allow_origins": [], "expose_headers": ["X-A"]},
]
ORIGINS = [None, "https://app.example", "https://evil.example", "https://x.test"]
RESPONSE_HEADERS: list[list[tuple[bytes, bytes]]] = [
    [(b"content-length", b"2"), (b"content-type", b"application/json")],
    [(b"vary", b"Accept-Encoding"), (b"content-length", b"2")],
    [(b"vary", b"A"), (b"access-control-allow-origin", b"old"), (b"vary", b"B")],
]


def _starlette(config: dict[str, Any], raw: list[tuple[bytes, bytes]], origin: str | None) -> Any:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    request = Headers(raw=[(b"origin", origin.encode())] if origin else [])
    message = {"type": "http.response.start", "status": 200, "headers": list(raw)}
    middleware = CORSMiddleware(None, **config)  # type: ignore[arg-type]
    asyncio.run(middleware.send(message, send, request))
    return sent[0]["headers"]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("raw", RESPONSE_HEADERS)
def test_decorate_is_starlettes_simple_response_rule(
    config: dict[str, Any], origin: str | None, raw: list[tuple[bytes, bytes]]
) -> None:
    ours = list(raw)
    GatewayCORS(None, **config).decorate(ours, origin)
    assert ours == _starlette(config, raw, origin)


def test_request_ids_have_the_shape_of_uuid4_hex() -> None:
    ids = [new_request_id() for _ in range(2000)]  # several refills of the buffer
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.hex == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122
