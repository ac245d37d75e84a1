"""One subscriber's stream: its filters, bounded queue, position and catch-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
)
from typing import Any, Protocol

import orjson

from gateway.errors import GatewayError
from gateway.realtime.events import CHANGE_KINDS, Change, Cursor, Event
from gateway.realtime.filter_worker import FilterSpec
from gateway.realtime.filters import Predicate, classify_change
from gateway.realtime.stats import HubStats

logger = logging.getLogger("gateway.realtime")

HEARTBEAT_S = 15.0


ColumnsFn = Callable[[], Collection[str] | None]
KEY_FATAL_CODES = frozenset(
    {"INVALID_API_KEY", "REVOKED_API_KEY", "EXPIRED_API_KEY", "PROJECT_SUSPENDED"}
    # a signed-out or expired session ends the stream too (docs/auth.md)
    | {"SESSION_NOT_FOUND", "SESSION_EXPIRED"}
)


class Feed(Protocol):
    """What a subscription needs from the hub that feeds it (``RealtimeHub``).

    Declared here, on the subscription's side, so that this module does not import the
    hub: the hub creates subscriptions and imports this module.
    """

    stats: HubStats

    @property
    def cursor(self) -> Cursor | None: ...

    def catch_up(self, sub: Subscription) -> AsyncIterator[Event]:
        """From the subscriber's position up to the hub's cursor, then join the live stream."""
        ...

    def unsubscribe(self, sub: Subscription) -> None: ...


class Subscription:
    """One stream: its project and table, filters, a bounded queue and a position."""

    def __init__(
        self,
        hub: Feed,
        project_id: str,
        table: str,
        *,
        predicate: Predicate,
        filter_columns: tuple[str, ...],
        columns: ColumnsFn,
        since: Cursor | None,
        queue_max: int,
        revalidate: Callable[[], Awaitable[None]] | None = None,
        revalidate_s: float = 30.0,
        owner: str | None = None,
        spec: FilterSpec | None = None,
    ) -> None:
        self.hub = hub
        self.project_id = project_id
        self.table = table
        self.predicate = predicate
        self.filter_columns = filter_columns
        self.columns = columns
        self.since = since
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(queue_max)
        self.position: Cursor = since or Cursor(0, 0)
        self.floor: Cursor = self.position
        self.live = False
        self.overflowed = False
        self.closed = False
        self.delivered = 0
        self.revalidate = revalidate
        self.revalidate_s = revalidate_s
        self._next_check = time.monotonic() + revalidate_s
        # owner tables: only this user's rows reach the stream (None: every row)
        self.owner = owner
        # the filter as data, for the filter worker process (None: no filter to evaluate
        # there; ``filter_columns`` empty)
        self.spec = spec
        # why the hub ended the stream (its filter ran out of budget), sent before the end
        self.failure: Event | None = None

    # called by the hub, synchronously, during dispatch
    def classify(self, change: Change) -> Change | None:
        """What this subscriber receives for a change (``filters.classify_change``)."""
        return classify_change(self.predicate, self.filter_columns, self.owner, change)

    def matches(self, change: Change) -> bool:
        return self.classify(change) is not None

    def offer(self, change: Change) -> bool:
        try:
            self.queue.put_nowait(change)
            return True
        except asyncio.QueueFull:
            self.overflowed = True
            self.live = False
            return False

    def fail(self, error: GatewayError) -> None:
        """End the stream with ``event: error`` (called by the hub during dispatch)."""
        if self.failure is None:
            self.failure = Event("error", None, {"code": error.code, "message": error.message})
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.live = False
        self.hub.unsubscribe(self)
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)  # wakes a consumer blocked on an empty queue

    def _render(self, change: Change, readable: Collection[str] | None) -> Event:
        key = (
            None
            if readable is None
            else readable
            if isinstance(readable, frozenset)
            else frozenset(readable)
        )
        cached = change.rendered.get(key)
        if cached is None:
            data: dict[str, Any] = {"table": self.table, "op": change.op}
            if change.op != "truncate":
                image = change.image
                data["row"] = image if key is None else {k: v for k, v in image.items() if k in key}
            block = (
                f"id: {change.cursor}\nevent: {change.op}\ndata: ".encode()
                + orjson.dumps(data)
                + b"\n\n"
            )
            cached = change.rendered[key] = (data, block)
        return Event(change.op, change.cursor, cached[0], cached[1])

    def _readable(self) -> tuple[Collection[str] | None, Event | None]:
        """The columns to send now, or an error event that ends the stream."""
        try:
            readable = self.columns()
        except GatewayError as exc:
            return None, Event("error", None, {"code": exc.code, "message": exc.message})
        if readable is not None:
            if not readable:
                return None, Event(
                    "error",
                    None,
                    {"code": "TABLE_NOT_READABLE", "message": "the table is no longer readable"},
                )
            lost = [c for c in self.filter_columns if c not in readable]
            if lost:
                return None, Event(
                    "error",
                    None,
                    {
                        "code": "COLUMN_NOT_READABLE",
                        "message": f"filter column '{lost[0]}' is no longer readable",
                    },
                )
        return readable, None

    async def _revalidate(self) -> Event | None:
        """Is the key still good? A revoked or expired key, or a suspended project, ends
        the stream; anything else (a database hiccup) does not."""
        assert self.revalidate is not None
        self._next_check = time.monotonic() + self.revalidate_s
        try:
            await self.revalidate()
        except GatewayError as exc:
            if exc.code in KEY_FATAL_CODES:
                return Event("error", None, {"code": exc.code, "message": exc.message})
        except Exception as exc:
            logger.info("realtime: key revalidation failed: %s", exc)
        return None

    async def events(self, heartbeat_s: float = HEARTBEAT_S) -> AsyncIterator[Event]:
        """Catch-up from ``since``, then the live stream; ends on overflow, error or close."""
        try:
            async for event in self.hub.catch_up(self):
                if event.kind in CHANGE_KINDS:
                    readable, error = self._readable()
                    if error is not None:
                        yield error
                        return
                    assert event.data is not None and event.cursor is not None
                    raw = event.data["change"]
                    self.position = event.cursor
                    self.delivered += 1
                    self.hub.stats.rows_delivered += 1
                    yield self._render(raw, readable)
                else:
                    if event.cursor is not None:
                        self.position = event.cursor
                    yield event
                    if event.kind == "error":
                        return
            yield Event("position", self.position)
            while True:
                if self.closed:
                    if self.failure is not None:
                        yield self.failure
                    return
                if self.revalidate is not None and time.monotonic() >= self._next_check:
                    error = await self._revalidate()
                    if error is not None:
                        yield error
                        return
                if self.overflowed:
                    yield Event("overflow", None, {"cursor": str(self.position)})
                    return
                try:
                    change = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    try:
                        async with asyncio.timeout(heartbeat_s):
                            change = await self.queue.get()
                    except TimeoutError:
                        # nothing is queued: every change up to the hub cursor that this
                        # subscriber should see has been sent, so its id may move on
                        hub_cursor = self.hub.cursor
                        if self.live and hub_cursor is not None and hub_cursor > self.position:
                            self.position = hub_cursor
                            yield Event("ping", hub_cursor)
                        else:
                            yield Event("ping")
                        continue
                if change is None:
                    continue  # close() wake-up; the loop re-checks the flags
                readable, error = self._readable()
                if error is not None:
                    yield error
                    return
                self.position = change.cursor
                self.delivered += 1
                self.hub.stats.rows_delivered += 1
                yield self._render(change, readable)
        finally:
            self.close()
