"""CORS for every answer: Starlette's ``CORSMiddleware`` with its simple-response rule
as one function on a response's raw header list.

The middleware stack (every route that is not a hot data route, and every preflight)
and the lean path of the hot data routes (``gateway/http/lean.py``) both decorate their
answers with ``GatewayCORS.decorate``: one source for the rule, so the two paths can't
drift. The rule is Starlette's, restated on ``(name, value)`` byte pairs because
building ``Headers``/``MutableHeaders`` per answer cost more than the rule itself; the
preflight answer stays Starlette's own.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Send

RawHeaders = list[tuple[bytes, bytes]]


def set_header(raw: RawHeaders, name: bytes, value: bytes) -> None:
    """``MutableHeaders.__setitem__``: replace the first ``name`` in place, drop the
    others, or append (``name`` lower-case)."""
    found = [index for index, (key, _) in enumerate(raw) if key == name]
    for index in reversed(found[1:]):
        del raw[index]
    if found:
        raw[found[0]] = (name, value)
    else:
        raw.append((name, value))


def add_vary(raw: RawHeaders, value: bytes) -> None:
    """``MutableHeaders.add_vary_header``: every ``Vary`` line joined, plus ``value``."""
    set_header(raw, b"vary", b", ".join([*(v for k, v in raw if k == b"vary"), value]))


class GatewayCORS(CORSMiddleware):
    """``CORSMiddleware`` whose simple responses go through ``decorate``."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.simple_raw = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.simple_headers.items()
        ]

    def decorate(self, raw: RawHeaders, origin: str | None) -> None:
        """Starlette's simple-response rule (``CORSMiddleware.send``), in place: with an
        Origin, the simple headers (exposed headers, ``*``); an allowed origin mirrored;
        ``Vary: Origin`` in every case where the answer depends on it."""
        if origin is not None:
            for name, value in self.simple_raw:
                set_header(raw, name, value)
            mirror = (self.allow_all_origins and self.allow_credentials) or (
                not self.allow_all_origins and self.is_allowed_origin(origin=origin)
            )
            if mirror:
                set_header(raw, b"access-control-allow-origin", origin.encode("latin-1"))
        add_vary(raw, b"Origin")

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        if message["type"] == "http.response.start":
            raw = message["headers"] = list(message.get("headers") or [])
            self.decorate(raw, request_headers.get("origin"))
        await send(message)
