"""A tiny TCP proxy on 127.0.0.1 that can turn its existing connections into black holes.

``blackhole()`` stops forwarding bytes on every connection open at that moment while
keeping both sockets open — what a half-open TCP connection or a silently dropped route
looks like to the client: writes succeed, nothing ever comes back. Connections made
afterwards are forwarded normally. Runs on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib


class _Link:
    def __init__(self) -> None:
        self.frozen = False
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._links: list[_Link] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        link = _Link()
        link.writers = [writer, up_writer]
        self._links.append(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link)),
            asyncio.create_task(self._pipe(up_reader, writer, link)),
        ]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if link.frozen:
                    continue  # swallowed: the peer never hears of it
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not link.frozen:
                with contextlib.suppress(Exception):
                    writer.close()

    def blackhole(self) -> int:
        """Freeze every connection open now; returns how many."""
        count = 0
        for link in self._links:
            if not link.frozen:
                link.frozen = True
                count += 1
        return count

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            for task in link.tasks:
                task.cancel()
            for writer in link.writers:
                with contextlib.suppress(Exception):
                    writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
