"""A small closed-loop HTTP/1.1 load generator for overload and outage tests.

Each client keeps one keep-alive connection to one instance and sends the next request
when the previous answer arrived, recording ``(started, status, seconds)``. A raw asyncio
client instead of httpx: on a 2-core machine the generator must cost little CPU, or its
own queueing shows up as gateway latency. Status 0 means the connection failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Result:
    started: float  # time.monotonic()
    status: int
    seconds: float
    instance: int
    retry_after: float = 0.0  # the answer's Retry-After (0: none)


@dataclass
class Load:
    urls: list[str]
    method: str = "GET"
    path: str = "/readyz"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    request_timeout: float = 30.0
    honor_retry_after: bool = False  # sleep Retry-After seconds after a 503/429
    results: list[Result] = field(default_factory=list)

    def _request(self, host: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if self.body or self.method == "POST":
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    async def _client(self, index: int, stop_at: float) -> None:
        instance = index % len(self.urls)
        parts = urlsplit(self.urls[instance])
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        request = self._request(f"{host}:{port}")
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while time.monotonic() < stop_at:
            started = time.monotonic()
            status = 0
            retry_after = 0.0
            try:
                async with asyncio.timeout(self.request_timeout):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    assert reader is not None
                    writer.write(request)
                    await writer.drain()
                    status, keep, retry_after = await _read_response(reader)
                if not keep:
                    writer.close()
                    writer = None
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                if writer is not None:
                    writer.close()
                    writer = None
            seconds = time.monotonic() - started
            self.results.append(Result(started, status, seconds, instance, retry_after))
            if status == 0:
                await asyncio.sleep(0.05)  # a refused connection: don't spin
            elif self.honor_retry_after and retry_after:
                await asyncio.sleep(min(retry_after, max(0.0, stop_at - time.monotonic())))
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def last_started(self) -> float:
        return max((r.started for r in self.results), default=0.0)

    async def run(self, clients: int, duration: float) -> list[Result]:
        stop_at = time.monotonic() + duration
        await asyncio.gather(*(self._client(i, stop_at) for i in range(clients)))
        return self.results


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, float]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    keep = True
    chunked = False
    retry_after = 0.0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "retry-after" and value.strip().isdigit():
            retry_after = float(value.strip())
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep, retry_after


def summarize(results: list[Result]) -> str:
    if not results:
        return "no requests"
    by_status: dict[int, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    latencies = sorted(r.seconds for r in results)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return (
        f"{len(results)} requests, statuses {dict(sorted(by_status.items()))}, "
        f"p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
