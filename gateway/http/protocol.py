"""uvicorn's HTTP/1.1 protocol (httptools), writing a complete answer in one socket send.

uvicorn writes an answer's status line and headers when the app sends
``http.response.start`` and the body when it sends ``http.response.body``: two sends,
two TCP segments, two wake-ups of the client for every answer. On loopback a send runs
the receiver's side of TCP too, and the header send was the gateway's largest single
line in a profile of a select by primary key after the database exchange itself
(docs/performance.md, "What each part of the design saves").

:class:`OneSendHttpToolsProtocol` holds the head of an answer that declares its
``content-length`` until the body's first write, and sends both at once. Everything
else passes straight through: an answer without ``content-length`` (a server-sent event
stream, chunked encoding) has its head sent at once, as does the answer to a HEAD
request (which gets no body write), ``100 Continue`` and uvicorn's own error answers.
A cycle that ends without a body write (the app failed after starting its answer)
flushes the held head when uvicorn closes the connection, as uvicorn did before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: uvicorn's status lines are all HTTP/1.1 and its header names lowercase
_HEAD_START = b"HTTP/1.1 "
_LENGTH_HEADER = b"\r\ncontent-length: "


class OneSendTransport:
    """A connection's transport as one request/response cycle sees it: the head of a
    sized answer waits for the body, then both go in one ``write``."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data.startswith(_HEAD_START) and _LENGTH_HEADER in data:
            self._head = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now (the cycle ends without a body)."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # anything else a cycle might ask of its transport: the real one, head sent first
        self.flush()
        return getattr(self._transport, name)


class OneSendHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles write through a
    :class:`OneSendTransport` (``uvicorn.run(http=OneSendHttpToolsProtocol)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._one_send = OneSendTransport(transport)

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # a new cycle (not an upgrade), whose answer has a body write to wait for; its
        # task is created but has not run yet, so it writes through the wrapper only
        if cycle is not None and cycle is not previous and cycle.scope["method"] != "HEAD":
            cycle.transport = self._one_send  # type: ignore[assignment]
