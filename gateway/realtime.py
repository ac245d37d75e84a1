"""Realtime fan-out: one poller per instance over ``gateway.changes``, a queue per subscriber.

Capture (migration 0005) appends every change of a realtime table to ``gateway.changes``
stamped with the writing transaction's id. This module reads that log and fans it out:

* **One cursor per instance.** ``RealtimeHub`` keeps one cursor ``(xid, id)`` and polls
  only for the projects that have subscribers on this instance::

      (xid, id) > cursor AND xid < pg_snapshot_xmin(pg_current_snapshot())
      AND project_id = ANY(active) ORDER BY xid, id LIMIT page

  Every transaction below the snapshot's xmin has finished, so no row can ever appear
  behind the cursor: nothing is skipped, and rows come out in transaction-id order. It
  polls again at once while pages are full, backs off to ``realtime_poll_max_ms`` when
  idle, and does not poll at all without subscribers. Cost grows with instances, not
  with subscribers.
* **Dispatch** is synchronous with the cursor update (no ``await`` between them), so
  "every change up to the hub cursor has been offered to every live subscriber" is
  always true; that is what makes the join of a resuming subscriber exact.
* **Resume.** A subscriber starts at a cursor (its ``since`` or the hub's cursor). Its own
  catch-up query reads its project's table from that cursor up to the hub's current
  cursor (all of it committed), page by page, then joins the live stream at the moment
  its position equals the hub cursor — checked and switched without an ``await`` in
  between, and never while a poll that excludes its project is in flight. After joining
  it receives only changes above its position: no gap, no duplicate at the join.
* **Retention** (``prune_changes``) deletes old changes in bounded batches and records,
  per project, the largest ``(xid, id)`` it deleted; a resume cursor below it would have
  a gap, so the subscriber gets a ``reset`` event carrying a fresh cursor instead.
* **Permissions** are the caller's: each subscription has a ``columns`` callable giving
  the columns the key may read *now* (from the metadata cache), applied to each event as
  it is sent, so a column made sensitive disappears from the next event.

Nothing here knows HTTP; ``sse_stream`` turns a subscription into ``text/event-stream``
bytes for the route.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.catalog import ProjectCatalog
from gateway.errors import GatewayError, service_unavailable
from gateway.settings import Settings

logger = logging.getLogger("gateway.realtime")

MAX_BIGINT = 2**63 - 1
PAGE_SIZE = 500
CATCHUP_PAGE_SIZE = 500
POLL_MIN_MS = 5
LINGER_S = 0.5  # keep polling at the minimum interval this long after the last change
HEARTBEAT_S = 15.0
RETRY_MS = 2000
COALESCE_MAX = 64  # SSE blocks per write when a subscriber's queue has a backlog
ADVISORY_LOCK_RETENTION = 0x6761_7465_7274  # "gatert": one pruner at a time


# --- cursors ------------------------------------------------------------------------------


class Cursor(NamedTuple):
    """A position in the change log: ``(xid, id)``; tuples compare like the SQL row value."""

    xid: int
    id: int

    def __str__(self) -> str:
        return f"{self.xid}-{self.id}"


_CURSOR_RE = re.compile(r"^([0-9]{1,19})-([0-9]{1,19})$")


def parse_cursor(raw: str) -> Cursor:
    """``<xid>-<id>``, both decimal, at most 2**63-1; anything else is 400 INVALID_QUERY."""
    match = _CURSOR_RE.match(raw.strip()) if isinstance(raw, str) else None
    if match:
        xid, id_ = int(match.group(1)), int(match.group(2))
        if xid <= MAX_BIGINT and id_ <= MAX_BIGINT:
            return Cursor(xid, id_)
    raise GatewayError(
        "INVALID_QUERY",
        "invalid realtime cursor: expected '<xid>-<id>' as sent in an event's id",
        details={"field": "since"},
    )


# --- changes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    cursor: Cursor
    project_id: str
    table: str
    op: str  # insert | update | delete
    pk: dict[str, Any]
    row: dict[str, Any] | None  # None for deletes: only the primary key is kept
    age_s: float = 0.0  # database clock: how old the change was when it was read
    # rendered SSE blocks by readable-column set: subscribers with the same permissions
    # share one serialization instead of one per subscriber
    rendered: dict[Any, tuple[dict[str, Any], bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def image(self) -> dict[str, Any]:
        return self.row if self.row is not None else self.pk


def _change(project_id: str, table: str, r: Sequence[Any], offset: int, age: Any) -> Change:
    xid, id_, op, pk, row = r[offset : offset + 5]
    return Change(
        cursor=Cursor(int(xid), int(id_)),
        project_id=project_id,
        table=table,
        op=op,
        pk=orjson.loads(pk),
        row=orjson.loads(row) if row is not None else None,
        age_s=float(age or 0.0),
    )


# --- filters, evaluated in Python against the row image -----------------------------------


class FilterLike(Protocol):
    column: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class Filter:
    """The query contract's filter (``gateway.contract.Filter`` has the same shape)."""

    column: str
    op: str
    value: Any


FILTER_OPS = frozenset(
    {"eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is", "contains",
     "containedBy", "overlaps"}
)  # fmt: skip
_MISSING = object()


def _invalid_value(column: str, message: str) -> GatewayError:
    return GatewayError(
        "INVALID_VALUE",
        f"filter on '{column}': {message}",
        details={"column": column},
    )


def _scalar_converter(base: str) -> Callable[[Any], Any]:
    def to_int(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("not an integer")
        if isinstance(v, float) and not v.is_integer():
            raise ValueError("not an integer")
        return int(v)

    def to_decimal(v: Any) -> decimal.Decimal:
        if isinstance(v, bool):
            raise ValueError("not a number")
        return decimal.Decimal(str(v))

    def to_bool(v: Any) -> bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise ValueError("not a boolean")

    def to_datetime(v: Any) -> dt.datetime:
        value = dt.datetime.fromisoformat(v)
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    def to_date(v: Any) -> dt.date:
        return dt.date.fromisoformat(v)

    def to_uuid(v: Any) -> uuid.UUID:
        return uuid.UUID(v)

    def to_text(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError("not a string")
        return v

    return {
        "integer": to_int,
        "bigint": to_int,
        "smallint": to_int,
        "numeric": to_decimal,
        "real": to_decimal,
        "double precision": to_decimal,
        "boolean": to_bool,
        "timestamptz": to_datetime,
        "date": to_date,
        "uuid": to_uuid,
        "text": to_text,
    }.get(base, lambda v: v)  # jsonb and unknown types compare as JSON values


def _converter(data_type: str | None) -> tuple[Callable[[Any], Any], bool]:
    """(convert one value, is an array type)."""
    data_type = data_type or "jsonb"
    if data_type.endswith("[]"):
        return _scalar_converter(data_type[:-2]), True
    return _scalar_converter(data_type), False


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    return bool(a == b)


def jsonb_contains(a: Any, b: Any) -> bool:
    """PostgreSQL's ``a @> b`` for jsonb values."""
    if isinstance(a, dict):
        return isinstance(b, dict) and all(k in a and jsonb_contains(a[k], v) for k, v in b.items())
    if isinstance(a, list):
        if isinstance(b, list):
            return all(any(jsonb_contains(x, y) for x in a) for y in b)
        if isinstance(b, dict):
            return False
        return any(not isinstance(x, (dict, list)) and _json_equal(x, b) for x in a)
    return not isinstance(b, (dict, list)) and _json_equal(a, b)


def _like_regex(pattern: str, insensitive: bool) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if insensitive else 0))


Predicate = Callable[[Mapping[str, Any]], bool]


def _array_key(values: list[Any]) -> list[tuple[Any, ...]]:
    return [(1,) if x is None else (0, x) for x in values]


def _compile_one(f: FilterLike, data_type: str | None) -> Predicate:
    column, op, value = f.column, f.op, f.value
    if op not in FILTER_OPS:
        raise GatewayError("INVALID_FILTER", f"unknown filter operator {op!r}")
    conv, is_array = _converter(data_type)
    is_json = (data_type or "jsonb") == "jsonb"

    def convert(v: Any) -> Any:
        try:
            return conv(v)
        except (ValueError, TypeError, ArithmeticError):
            raise _invalid_value(column, f"{v!r} is not a valid {data_type}") from None

    def row_value(row: Mapping[str, Any]) -> Any:
        v = row.get(column)
        if v is None:
            return None
        try:
            if is_array:
                return [None if x is None else conv(x) for x in v] if isinstance(v, list) else v
            return conv(v)
        except (ValueError, TypeError, ArithmeticError):
            return _MISSING

    if op == "is":
        if value is None:
            return lambda row: row.get(column) is None
        if not isinstance(value, bool):
            raise GatewayError(
                "INVALID_FILTER", f"filter on '{column}': is takes null, true or false"
            )
        return lambda row: row.get(column) is value

    if op in ("like", "ilike"):
        if not isinstance(value, str):
            raise GatewayError("INVALID_FILTER", f"filter on '{column}': {op} takes a string")
        regex = _like_regex(value, op == "ilike")

        def like(row: Mapping[str, Any]) -> bool:
            v = row.get(column)
            return isinstance(v, str) and regex.fullmatch(v) is not None

        return like

    if value is None:
        raise GatewayError("INVALID_FILTER", f"filter on '{column}': {op} can't compare with null")

    if op == "in":
        if not isinstance(value, list):
            raise GatewayError("INVALID_FILTER", f"filter on '{column}': in takes an array")
        if is_json:
            choices = list(value)
            return lambda row: any(_json_equal(row.get(column), c) for c in choices)
        allowed = [convert(v) for v in value if v is not None]

        def in_(row: Mapping[str, Any]) -> bool:
            v = row_value(row)
            return v is not None and v is not _MISSING and any(_json_equal(v, a) for a in allowed)

        return in_

    if op in ("contains", "containedBy", "overlaps"):
        if is_array:
            if not isinstance(value, list):
                raise _invalid_value(column, f"{op} takes an array")
            wanted = [convert(v) for v in value]

            def array_op(row: Mapping[str, Any]) -> bool:
                have = row_value(row)
                if not isinstance(have, list):
                    return False
                if op == "contains":
                    return all(w in have for w in wanted)
                if op == "containedBy":
                    return all(h in wanted for h in have)
                return any(h in wanted for h in have if h is not None)

            return array_op
        if is_json and op != "overlaps":
            if op == "contains":
                return lambda row: (
                    row.get(column) is not None and jsonb_contains(row.get(column), value)
                )
            return lambda row: (
                row.get(column) is not None and jsonb_contains(value, row.get(column))
            )
        raise _invalid_value(column, f"{op} needs an array or jsonb column")

    # eq neq gt gte lt lte
    if is_json and op in ("gt", "gte", "lt", "lte"):
        # jsonb's own total order (objects > arrays > booleans > numbers > strings, ...)
        # is not reproduced here: refused rather than answered differently from /query
        raise GatewayError(
            "INVALID_FILTER",
            f"filter on '{column}': {op} on a jsonb column is not supported in realtime",
        )
    if is_array:
        if not isinstance(value, list):
            raise _invalid_value(column, "compare an array column with an array")
        target: Any = [convert(v) for v in value]
    elif is_json:
        target = value
    else:
        target = convert(value)

    def compare(row: Mapping[str, Any]) -> bool:
        v = row.get(column) if is_json else row_value(row)
        if v is None or v is _MISSING:
            return False
        try:
            if op == "eq":
                return _json_equal(v, target)
            if op == "neq":
                return not _json_equal(v, target)
            if is_array:
                # PostgreSQL orders arrays element by element, a NULL element after
                # every value, then by length
                v, compared = _array_key(v), _array_key(target)
            else:
                compared = target
            if op == "gt":
                return bool(v > compared)
            if op == "gte":
                return bool(v >= compared)
            if op == "lt":
                return bool(v < compared)
            return bool(v <= compared)
        except TypeError:
            return False

    return compare


def compile_filters(
    filters: Iterable[FilterLike], column_types: Mapping[str, str] | None = None
) -> tuple[Predicate, tuple[str, ...]]:
    """A predicate on a row image (AND of all filters) and the columns they use.

    ``column_types`` maps column names to registry types (``text``, ``bigint[]``, ...) so
    values compare as their type (timestamps as instants, numerics as decimals); a column
    without a type compares as JSON.
    """
    types = column_types or {}
    compiled: list[tuple[str, Predicate]] = []
    for f in filters:
        compiled.append((f.column, _compile_one(f, types.get(f.column))))
    columns = tuple(dict.fromkeys(c for c, _ in compiled))
    if not compiled:
        return (lambda row: True), ()

    def predicate(row: Mapping[str, Any]) -> bool:
        return all(p(row) for _, p in compiled)

    # A delete carries only the primary key: filters on other columns can't be checked
    # there, so deletes are matched on the filters whose columns they carry.
    def partial(row: Mapping[str, Any]) -> bool:
        return all(p(row) for c, p in compiled if c in row)

    predicate.partial = partial  # type: ignore[attr-defined]
    return predicate, columns


# --- subscriptions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """What a subscription yields: a change, or a control event, or a heartbeat."""

    kind: str  # insert | update | delete | reset | overflow | error | position | ping
    cursor: Cursor | None = None
    data: dict[str, Any] | None = None
    raw: bytes | None = None  # the whole SSE block, when already rendered


ColumnsFn = Callable[[], Collection[str] | None]
KEY_FATAL_CODES = frozenset(
    {"INVALID_API_KEY", "REVOKED_API_KEY", "EXPIRED_API_KEY", "PROJECT_SUSPENDED"}
)


class Subscription:
    """One stream: its project and table, filters, a bounded queue and a position."""

    def __init__(
        self,
        hub: RealtimeHub,
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

    # called by the hub, synchronously, during dispatch
    def matches(self, change: Change) -> bool:
        if change.row is None:
            partial = getattr(self.predicate, "partial", None)
            return partial(change.pk) if partial else True
        return self.predicate(change.row)

    def offer(self, change: Change) -> bool:
        try:
            self.queue.put_nowait(change)
            return True
        except asyncio.QueueFull:
            self.overflowed = True
            self.live = False
            return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.live = False
        self.hub._unsubscribe(self)
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
            image = change.image
            row = image if key is None else {k: v for k, v in image.items() if k in key}
            data = {"table": self.table, "op": change.op, "row": row}
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
            async for event in self.hub._catch_up(self):
                if event.kind in ("insert", "update", "delete"):
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


# --- the hub --------------------------------------------------------------------------------


@dataclass
class HubStats:
    polls: int = 0
    poll_errors: int = 0
    rows_polled: int = 0
    rows_dispatched: int = 0
    rows_delivered: int = 0
    catchup_queries: int = 0
    catalog_loads: int = 0
    overflows: int = 0
    resets: int = 0
    send_timeouts: int = 0
    last_change_age_s: float = 0.0  # now - created_at of the last change read (DB clock)
    held_back_s: float = 0.0  # age of the oldest visible change not yet deliverable
    xmin_lag_xids: int = 0  # how far pg_snapshot_xmin trails the next xid
    last_poll_monotonic: float = field(default=0.0)


POLL_SQL = """
SELECT s.xmin::text::bigint, (s.xmax::text::bigint - s.xmin::text::bigint),
       c.xid::text::bigint, c.id, c.op, c.pk::text, c.row::text,
       c.project_id::text, c.table_name,
       extract(epoch FROM clock_timestamp() - c.created_at), v.version,
       extract(epoch FROM clock_timestamp() - (
           SELECT min(h.created_at) FROM gateway.changes h
            WHERE h.xid >= s.xmin AND (h.xid, h.id) > (CAST(%(xid)s AS text)::xid8, %(id)s)
              AND h.project_id = ANY(%(projects)s::uuid[])))
  FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
               pg_snapshot_xmax(pg_current_snapshot()) AS xmax) AS s
  LEFT JOIN LATERAL (
        SELECT xid, id, op, pk, row, project_id, table_name, created_at
          FROM gateway.changes
         WHERE (xid, id) > (CAST(%(xid)s AS text)::xid8, %(id)s)
           AND xid < s.xmin
           AND project_id = ANY(%(projects)s::uuid[])
         ORDER BY xid, id
         LIMIT %(limit)s) AS c ON true
  LEFT JOIN gateway.registry_versions v ON v.project_id = c.project_id
 ORDER BY c.xid, c.id
"""

CATCHUP_SQL = """
SELECT w.xid::text::bigint, w.id,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
       c.xid::text::bigint, c.id, c.op, c.pk::text, c.row::text,
       extract(epoch FROM clock_timestamp() - c.created_at)
  FROM (SELECT 1) AS one
  LEFT JOIN gateway.changes_pruned w ON w.project_id = %(project)s::uuid
  LEFT JOIN LATERAL (
        SELECT xid, id, op, pk, row, created_at
          FROM gateway.changes
         WHERE project_id = %(project)s::uuid AND table_name = %(table)s
           AND (xid, id) > (CAST(%(xid)s AS text)::xid8, %(id)s)
           AND (xid, id) <= (CAST(%(to_xid)s AS text)::xid8, %(to_id)s)
         ORDER BY xid, id
         LIMIT %(limit)s) AS c ON true
 ORDER BY c.xid, c.id
"""

HEAD_SQL = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


class RealtimeHub:
    """The instance's poller and its subscribers (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        *,
        page_size: int = PAGE_SIZE,
        catchup_page_size: int = CATCHUP_PAGE_SIZE,
        catalog_loader: Callable[[AsyncConnection[Any], str], Awaitable[ProjectCatalog]]
        | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        # a page never holds more than one subscriber queue: a backlog released at once
        # (after a long transaction ends) must not overflow subscribers that keep up
        self.page_size = max(1, min(page_size, settings.realtime_queue_max))
        self.catchup_page_size = catchup_page_size
        self.stats = HubStats()
        self._index: dict[tuple[str, str], set[Subscription]] = {}
        self._per_project: dict[str, int] = {}
        self._subscribers: set[Subscription] = set()
        self._cursor: Cursor | None = None
        self._epoch = 0
        self._inflight: frozenset[str] | None = None  # projects of the poll in flight
        self._poll_done = asyncio.Event()
        self._wake = asyncio.Event()
        self._init_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        # project id -> (registry version or None if unknown, catalog)
        self._catalogs: dict[str, tuple[int | None, ProjectCatalog]] = {}
        self._catalog_loader = catalog_loader

    # -- public --------------------------------------------------------------------------

    @property
    def cursor(self) -> Cursor | None:
        return self._cursor

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def project_streams(self, project_id: str) -> int:
        return self._per_project.get(project_id, 0)

    def snapshot(self) -> dict[str, Any]:
        """Figures for metrics and /readyz."""
        s = self.stats
        return {
            "subscribers": len(self._subscribers),
            "live_subscribers": sum(1 for x in self._subscribers if x.live),
            "projects": len(self._per_project),
            "polls": s.polls,
            "poll_errors": s.poll_errors,
            "rows_polled": s.rows_polled,
            "rows_dispatched": s.rows_dispatched,
            "rows_delivered": s.rows_delivered,
            "catchup_queries": s.catchup_queries,
            "catalog_loads": s.catalog_loads,
            "overflows": s.overflows,
            "resets": s.resets,
            "send_timeouts": s.send_timeouts,
            "last_change_age_s": s.last_change_age_s,
            "held_back_s": s.held_back_s,
            "xmin_lag_xids": s.xmin_lag_xids,
            "cursor": str(self._cursor) if self._cursor else None,
        }

    def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._run(), name="realtime-poller")

    def drain(self) -> None:
        """Shutdown has begun: refuse new streams (503) and end every open one now, so
        clients reconnect to another instance at once instead of when the server gives up
        waiting for them."""
        self._stopped = True
        for sub in list(self._subscribers):
            sub.close()
        self._poll_done.set()

    async def stop(self) -> None:
        """Stop polling and end every stream (each consumer returns at its next step)."""
        self._stopped = True
        for sub in list(self._subscribers):
            sub.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._poll_done.set()  # a catch-up waiting for a poll sees it is closed

    async def subscribe(
        self,
        project_id: str,
        table: str,
        *,
        filters: Iterable[FilterLike] = (),
        column_types: Mapping[str, str] | None = None,
        columns: ColumnsFn = lambda: None,
        since: Cursor | None = None,
        catalog: ProjectCatalog | None = None,
        revalidate: Callable[[], Awaitable[None]] | None = None,
    ) -> Subscription:
        """Register a stream. 429 TOO_MANY_SUBSCRIPTIONS beyond the per-project limit.

        ``columns`` returns the readable columns for the current metadata (``None`` = all);
        it is called for every event sent.
        """
        if self._stopped:
            raise service_unavailable("the instance is shutting down")
        predicate, filter_columns = compile_filters(filters, column_types)
        limit = self.settings.realtime_max_streams_per_project
        if self._per_project.get(project_id, 0) >= limit:
            raise GatewayError(
                "TOO_MANY_SUBSCRIPTIONS",
                f"at most {limit} realtime streams per project on one instance",
                details={"limit": limit},
                headers={"Retry-After": "5"},
            )
        sub = Subscription(
            self,
            project_id,
            table,
            predicate=predicate,
            filter_columns=filter_columns,
            columns=columns,
            since=since,
            queue_max=self.settings.realtime_queue_max,
            revalidate=revalidate,
            revalidate_s=self.settings.realtime_revalidate_s,
        )
        # register first (reserves the slot; keeps the hub cursor alive), then start at
        # the hub's cursor if the client gave none: the catch-up joins it to the stream
        self._subscribers.add(sub)
        self._per_project[project_id] = self._per_project.get(project_id, 0) + 1
        self._index.setdefault((project_id, table), set()).add(sub)
        if catalog is not None and project_id not in self._catalogs:
            self._catalogs[project_id] = (None, catalog)  # version unknown: reload on use
        try:
            cursor = await self._ensure_cursor()
        except BaseException:
            sub.close()
            raise
        if since is None:
            sub.position = sub.floor = cursor
        self.start()
        self._wake.set()
        return sub

    # -- internals -------------------------------------------------------------------------

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub not in self._subscribers:
            return
        self._subscribers.discard(sub)
        key = (sub.project_id, sub.table)
        subs = self._index.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._index[key]
        left = self._per_project.get(sub.project_id, 0) - 1
        if left > 0:
            self._per_project[sub.project_id] = left
        else:
            self._per_project.pop(sub.project_id, None)
            self._catalogs.pop(sub.project_id, None)
        if sub.overflowed:
            self.stats.overflows += 1
        if not self._subscribers:
            # nobody listens: stop polling, and restart at the head for the next one
            # (an old cursor would make the first poll rescan everything since)
            self._cursor = None
            self._epoch += 1

    async def _head(self) -> Cursor:
        async with self.pool.connection() as conn:
            cur = await conn.execute(HEAD_SQL)
            row = await cur.fetchone()
        assert row is not None
        return Cursor(int(row[0]), 0)

    async def _ensure_cursor(self) -> Cursor:
        if self._cursor is not None:
            return self._cursor
        async with self._init_lock:
            if self._cursor is None:
                try:
                    head = await self._head()
                except Exception as exc:
                    logger.warning("realtime: can't read the head cursor: %s", exc)
                    raise service_unavailable("realtime is unavailable, retry shortly") from None
                if self._cursor is None:
                    self._cursor = head
            assert self._cursor is not None
            return self._cursor

    async def _catch_up(self, sub: Subscription) -> AsyncIterator[Event]:
        """From the subscriber's position up to the hub cursor, then join the live stream.

        Yields change events (``data={"change": Change}``) and ``reset``.
        """
        pos = sub.position
        checked = sub.since is None  # a client's cursor is checked against retention once
        while True:
            target = self._cursor
            if sub.closed or target is None:
                return
            inflight = self._inflight
            if not checked:
                pass  # query once even if there is nothing to read: retention, future ids
            elif pos >= target and (inflight is None or sub.project_id in inflight):
                # join: no await between the check and the switch, so every change above
                # ``pos`` will be offered by a dispatch that hasn't happened yet
                sub.floor = pos
                sub.position = pos
                sub.live = True
                return
            elif pos >= target:
                # a poll that doesn't include this project is in flight: it will move the
                # cursor past rows we must read ourselves; wait for it and catch up again
                self._poll_done.clear()
                await self._poll_done.wait()
                continue
            self.stats.catchup_queries += 1
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(
                        CATCHUP_SQL,
                        {
                            "project": sub.project_id,
                            "table": sub.table,
                            "xid": str(pos.xid),
                            "id": pos.id,
                            "to_xid": str(target.xid),
                            "to_id": target.id,
                            "limit": self.catchup_page_size,
                        },
                    )
                    rows = await cur.fetchall()
            except Exception as exc:
                logger.warning("realtime: catch-up query failed: %s", exc)
                yield Event(
                    "error",
                    None,
                    {"code": "SERVICE_UNAVAILABLE", "message": "catch-up failed, reconnect"},
                )
                sub.close()
                return
            checked = True
            first = rows[0]
            pruned = Cursor(int(first[0]), int(first[1])) if first[0] is not None else None
            xmax = int(first[2])
            if (pruned is not None and pruned > pos) or pos.xid > xmax:
                # changes after ``pos`` were deleted by retention (or the cursor is from
                # the future): the client must refetch and resume from a fresh cursor
                self.stats.resets += 1
                pos = self._cursor or target
                yield Event("reset", pos, {"cursor": str(pos)})
                continue
            changes = [
                _change(sub.project_id, sub.table, r, 3, r[8]) for r in rows if r[3] is not None
            ]
            for change in changes:
                if sub.closed:
                    return
                if change.cursor > pos and sub.matches(change):
                    yield Event(change.op, change.cursor, {"change": change})
                pos = change.cursor
            if len(changes) < self.catchup_page_size:
                pos = max(pos, target)  # everything up to the target has been read

    def catalog(self, project_id: str) -> ProjectCatalog | None:
        """The newest catalog the hub holds for a project with subscribers here."""
        entry = self._catalogs.get(project_id)
        return entry[1] if entry else None

    async def _refresh_catalogs(self, versions: dict[str, int | None]) -> None:
        for project_id, version in versions.items():
            entry = self._catalogs.get(project_id)
            if entry is not None and entry[0] is not None and entry[0] == version:
                continue
            if project_id not in self._per_project:
                continue
            async with self.pool.connection() as conn:
                catalog = await self._load_catalog(conn, project_id)
            self.stats.catalog_loads += 1
            self._catalogs[project_id] = (version, catalog)

    async def _load_catalog(self, conn: AsyncConnection[Any], project_id: str) -> ProjectCatalog:
        loader = self._catalog_loader
        if loader is None:
            from gateway.metadata import load_catalog

            loader = load_catalog
        result: ProjectCatalog = await loader(conn, project_id)
        return result

    async def _poll_once(
        self, cursor: Cursor, projects: list[str]
    ) -> tuple[list[Change], int, dict[str, int | None]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                POLL_SQL,
                {
                    "xid": str(cursor.xid),
                    "id": cursor.id,
                    "projects": projects,
                    "limit": self.page_size,
                },
            )
            rows = await cur.fetchall()
        first = rows[0]
        xmin = int(first[0])
        self.stats.xmin_lag_xids = int(first[1])
        # committed changes held back by an older open transaction: how long they wait
        self.stats.held_back_s = float(first[11] or 0.0)
        changes = [_change(r[7], r[8], r, 2, r[9]) for r in rows if r[2] is not None]
        versions = {r[7]: int(r[10] or 0) for r in rows if r[2] is not None}
        return changes, xmin, versions

    def _dispatch(self, changes: list[Change]) -> None:
        """Offer changes to live subscribers. Synchronous: runs between two awaits."""
        index = self._index
        for change in changes:
            subs = index.get((change.project_id, change.table))
            if not subs:
                continue
            for sub in tuple(subs):
                if not sub.live or change.cursor <= sub.floor:
                    continue
                try:
                    matched = sub.matches(change)
                except Exception:  # a filter must never stop the poller for everyone
                    logger.exception("realtime: filter evaluation failed")
                    matched = False
                if matched:
                    sub.offer(change)
                    self.stats.rows_dispatched += 1

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _run(self) -> None:
        while True:
            try:
                await self._poll_loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                # never leave subscribers without a poller; the cursor is still valid
                logger.exception("realtime: poller failed; restarting")
                self._inflight = None
                self._poll_done.set()
                await asyncio.sleep(1.0)

    async def _poll_loop(self) -> None:
        max_delay = self.settings.realtime_poll_max_ms / 1000
        min_delay = min(POLL_MIN_MS / 1000, max_delay)
        delay = min_delay
        last_rows_at = 0.0
        while True:
            if not self._subscribers or self._cursor is None:
                self._wake.clear()
                await self._wake.wait()
                delay = min_delay
                continue
            self._wake.clear()
            epoch, cursor = self._epoch, self._cursor
            projects = list(self._per_project)
            self._inflight = frozenset(projects)
            error: Exception | None = None
            try:
                changes, xmin, versions = await self._poll_once(cursor, projects)
                # registry changed since the catalog we hold: reload before these changes
                # are sent (same snapshot as the rows, so never older than the write)
                await self._refresh_catalogs(versions)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            finally:
                self._inflight = None
                self._poll_done.set()
            if error is not None:
                self.stats.poll_errors += 1
                logger.warning("realtime: poll failed: %s", error)
                await self._sleep(max(max_delay, 0.5))
                continue
            self.stats.polls += 1
            self.stats.last_poll_monotonic = time.monotonic()
            if epoch != self._epoch or self._cursor != cursor:
                continue  # everyone left (and maybe came back at a new head) meanwhile
            self.stats.rows_polled += len(changes)
            self._dispatch(changes)
            new = changes[-1].cursor if changes else cursor
            if changes:
                self.stats.last_change_age_s = changes[-1].age_s
            full = len(changes) >= self.page_size
            if not full:
                new = max(new, Cursor(xmin, 0))  # all rows below xmin have been read
            self._cursor = new
            if full:
                delay = min_delay
                await asyncio.sleep(0)
                continue
            now = time.monotonic()
            if changes:
                last_rows_at = now
                delay = min_delay
            elif now - last_rows_at < LINGER_S:
                delay = min_delay  # changes were flowing a moment ago: stay quick
            else:
                delay = min(max(delay * 2, min_delay), max_delay)
            await self._sleep(delay)


# --- SSE ------------------------------------------------------------------------------------


def format_event(event: Event) -> bytes:
    """One ``text/event-stream`` block."""
    if event.raw is not None:
        return event.raw
    kind = event.kind
    if kind == "ping":
        if event.cursor is not None:
            return f": ping\nid: {event.cursor}\n\n".encode()
        return b": ping\n\n"
    if kind == "position":
        # an id-only block: browsers update lastEventId without firing an event, so a
        # reconnect resumes from here even before the first change arrives
        return f"retry: {RETRY_MS}\nid: {event.cursor}\n\n".encode()
    head = f"id: {event.cursor}\n" if event.cursor is not None else ""
    return (
        head.encode()
        + b"event: "
        + kind.encode()
        + b"\ndata: "
        + orjson.dumps(event.data if event.data is not None else {})
        + b"\n\n"
    )


async def sse_stream(sub: Subscription, heartbeat_s: float = HEARTBEAT_S) -> AsyncIterator[bytes]:
    """The subscription as SSE bytes; closes the subscription when the stream ends."""
    buffered: list[bytes] = []
    try:
        async for event in sub.events(heartbeat_s):
            buffered.append(format_event(event))
            # changes already queued go out in one write; nothing waits for company
            if len(buffered) >= COALESCE_MAX or sub.queue.empty():
                yield b"".join(buffered)
                buffered.clear()
        if buffered:
            yield b"".join(buffered)
    finally:
        sub.close()


# --- retention ------------------------------------------------------------------------------

PRUNE_SQL = """
WITH doomed AS (
    SELECT xid, id FROM gateway.changes
     WHERE created_at < now() - make_interval(secs => %(seconds)s)
       AND (SELECT pg_try_advisory_xact_lock(%(lock)s))
     LIMIT %(batch)s
), deleted AS (
    DELETE FROM gateway.changes c USING doomed
     WHERE c.xid = doomed.xid AND c.id = doomed.id
    RETURNING c.project_id, c.xid, c.id
), newest AS (
    SELECT DISTINCT ON (project_id) project_id, xid, id
      FROM deleted ORDER BY project_id, xid DESC, id DESC
), marked AS (
    INSERT INTO gateway.changes_pruned AS w (project_id, xid, id)
    SELECT project_id, xid, id FROM newest
    ON CONFLICT (project_id) DO UPDATE
       SET xid = excluded.xid, id = excluded.id, pruned_at = now()
     WHERE (w.xid, w.id) < (excluded.xid, excluded.id)
)
SELECT count(*) FROM deleted
"""


async def prune_changes(
    conn: AsyncConnection[Any],
    retention_hours: float,
    batch: int = 5000,
    *,
    max_batches: int = 20,
) -> int:
    """Delete changes older than the retention, at most ``batch`` rows per statement.

    Each batch is one statement that also records, per project, the largest deleted
    ``(xid, id)`` (resuming below it answers ``reset``), and takes a transaction-scoped
    advisory lock first: when instances prune at the same time only one deletes, the
    others find nothing and stop. On an autocommit connection every batch commits on its
    own, so no transaction stays open long (an open transaction holds realtime delivery
    back). At most ``max_batches`` per call; the next call continues. Returns the number
    of rows deleted.
    """
    total = 0
    for _ in range(max_batches):
        cur = await conn.execute(
            PRUNE_SQL,
            {
                "seconds": float(retention_hours) * 3600.0,
                "batch": batch,
                "lock": ADVISORY_LOCK_RETENTION,
            },
        )
        row = await cur.fetchone()
        deleted = int(row[0]) if row else 0
        total += deleted
        if deleted < batch:
            break
    return total


def drain_on_signals(hub: RealtimeHub) -> None:
    """Chain SIGTERM/SIGINT: drain the hub, then whatever handler was there (uvicorn's).

    uvicorn waits for open connections before it runs the lifespan shutdown; SSE streams
    never finish on their own, so without this a SIGTERM would hold every stream (and the
    exit) for the whole graceful-shutdown timeout. Only possible in the main thread (not
    under a test client); uvicorn restores its own handlers when it exits.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(hub.drain)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - not the main thread after all
            return


def install(hub: RealtimeHub, extras: dict[str, Any]) -> None:
    """Hook the hub into the instance: its figures as the ``realtime`` metrics source, and
    retention as a job of the maintenance leader (one instance per tick).

    The job deliberately does NOT delete inside the leader's transaction (the ``conn`` it
    is given): every transaction that holds an xid holds realtime delivery back until it
    ends, so each batch commits on its own connection in a few milliseconds instead of
    staying open for the whole tick.
    """
    metrics = extras.get("metrics")
    if metrics is not None:
        metrics.register_source("realtime", hub.snapshot)
    maintenance = extras.get("maintenance")
    if maintenance is None:
        logger.warning("realtime: no maintenance leader; changes are not pruned")
        return
    settings, pool = hub.settings, hub.pool

    async def realtime_retention(conn: AsyncConnection[Any]) -> int:
        async with pool.connection() as own:
            return await prune_changes(own, settings.realtime_retention_hours)

    maintenance.register("realtime_retention", realtime_retention)
