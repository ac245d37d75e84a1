"""An SSE client for the realtime endpoint of real gateway processes.

A ``Stream`` reads one connection in an asyncio task; cancelling the task drops the
connection, exactly like a browser tab going away. ``gate`` cleared = the client stops
reading (a slow client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.realtime.events import Cursor, parse_cursor
from tests.support.polling import wait_until_async

BASE = "/v1/inhouse/db"
TIMEOUT_S = 60.0
# instances that poll, beat and revalidate fast, so a test sees changes in well under 1 s
REALTIME_ENV = {
    "GATEWAY_REALTIME_POLL_MAX_MS": "50",
    "GATEWAY_REALTIME_HEARTBEAT_S": "1",
    "GATEWAY_REALTIME_REVALIDATE_S": "0.5",
    "GATEWAY_POOL_MAX": "8",
}


@dataclass
class SSE:
    id: str | None
    event: str
    data: Any

    @property
    def cursor(self) -> Cursor:
        assert self.id is not None
        return parse_cursor(self.id)


class Stream:
    """One SSE connection read in a task; ``gate`` cleared = the client stops reading."""

    def __init__(
        self,
        url: str,
        *,
        table: str = "todos",
        key: str | None = None,
        header_key: str | None = None,
        filters: Any = None,
        since: str | None = None,
        last_event_id: str | None = None,
        ticket: str | None = None,
    ) -> None:
        params: dict[str, str] = {"table": table}
        if key is not None:
            params["apikey"] = key
        if ticket is not None:
            params["ticket"] = ticket
        if filters is not None:
            params["filters"] = json.dumps(filters)
        if since is not None:
            params["since"] = since
        headers: dict[str, str] = {}
        if header_key is not None:
            headers["Authorization"] = f"Bearer {header_key}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.events: list[SSE] = []
        self.error: Exception | None = None
        self.last_id: str | None = None
        self.comments = 0
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.body = b""
        self.gate = asyncio.Event()
        self.gate.set()
        self.opened = asyncio.Event()
        self.ended = asyncio.Event()
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT_S, read=300))
        self.task = asyncio.create_task(self._run(url + BASE + "/realtime", params, headers))

    async def _run(self, url: str, params: dict[str, str], headers: dict[str, str]) -> None:
        try:
            async with self.client.stream("GET", url, params=params, headers=headers) as r:
                self.status, self.headers = r.status_code, r.headers
                if r.status_code != 200:
                    self.body = await r.aread()
                    return
                self.opened.set()
                fields: dict[str, str] = {}
                async for line in r.aiter_lines():
                    await self.gate.wait()
                    if line == "":
                        if "id" in fields:
                            self.last_id = fields["id"]
                        if "event" in fields or "data" in fields:
                            data = json.loads(fields["data"]) if "data" in fields else None
                            self.events.append(
                                SSE(fields.get("id"), fields.get("event", "message"), data)
                            )
                        fields = {}
                    elif line.startswith(":"):
                        self.comments += 1
                    else:
                        name, _, value = line.partition(":")
                        fields[name] = value[1:] if value.startswith(" ") else value
        except httpx.HTTPError as exc:
            self.error = exc  # the server went away (a crashed instance)
        finally:
            self.opened.set()
            self.ended.set()
            await self.client.aclose()

    @property
    def changes(self) -> list[SSE]:
        return [e for e in self.events if e.event in ("insert", "update", "delete")]

    def error_body(self) -> dict[str, Any]:
        body = json.loads(self.body)
        assert body["data"] is None
        return body["error"]

    async def wait_open(self) -> int:
        await asyncio.wait_for(self.opened.wait(), TIMEOUT_S)
        assert self.status is not None
        if self.status == 200:
            # joined: the first block (an id-only position) has arrived
            await wait_until_async(
                lambda: self.last_id is not None, timeout=TIMEOUT_S, message="the stream's first id"
            )
        return self.status

    async def wait_for(self, n: int, timeout: float = TIMEOUT_S) -> list[SSE]:
        await wait_until_async(
            lambda: len(self.changes) >= n or self.ended.is_set(),
            timeout=timeout,
            message=lambda: f"{n} changes (got {len(self.changes)})",
        )
        assert len(self.changes) >= n, (len(self.changes), self.events[-3:], self.status)
        return self.changes

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
