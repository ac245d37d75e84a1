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
import logging
import signal
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.errors import GatewayError, service_unavailable
from gateway.metadata.catalog import ProjectCatalog
from gateway.realtime.events import Change, Cursor, Event, change_from_row
from gateway.realtime.filters import FilterLike, compile_filters
from gateway.realtime.retention import prune_changes
from gateway.realtime.subscription import ColumnsFn, Subscription
from gateway.settings import Settings

logger = logging.getLogger("gateway.realtime")

PAGE_SIZE = 500
CATCHUP_PAGE_SIZE = 500
POLL_MIN_MS = 5
LINGER_S = 0.5  # keep polling at the minimum interval this long after the last change


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
       c.xid::text::bigint, c.id, c.op, c.pk::text, c.row::text, c.old_row::text,
       c.project_id::text, c.table_name,
       extract(epoch FROM clock_timestamp() - c.created_at), v.version,
       extract(epoch FROM clock_timestamp() - (
           SELECT min(h.created_at) FROM gateway.changes h
            WHERE h.xid >= s.xmin AND (h.xid, h.id) > (CAST(%(xid)s AS text)::xid8, %(id)s)
              AND h.project_id = ANY(%(projects)s::uuid[]))),
       c.owner::text
  FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
               pg_snapshot_xmax(pg_current_snapshot()) AS xmax) AS s
  LEFT JOIN LATERAL (
        SELECT xid, id, op, pk, row, old_row, project_id, table_name, created_at, owner
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
       c.xid::text::bigint, c.id, c.op, c.pk::text, c.row::text, c.old_row::text,
       extract(epoch FROM clock_timestamp() - c.created_at), v.version, c.owner::text
  FROM (SELECT 1) AS one
  LEFT JOIN gateway.changes_pruned w ON w.project_id = %(project)s::uuid
  LEFT JOIN gateway.registry_versions v ON v.project_id = %(project)s::uuid
  LEFT JOIN LATERAL (
        SELECT xid, id, op, pk, row, old_row, created_at, owner
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
        owner: str | None = None,
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
            owner=owner,
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
                change_from_row(sub.project_id, sub.table, r, 3, r[9], owner=r[11])
                for r in rows
                if r[3] is not None
            ]
            if changes:
                # as in a poll: the registry version read with these changes; a catalog
                # older than it (e.g. the one the stream was opened with) is reloaded
                # before they are sent
                try:
                    await self._refresh_catalogs({sub.project_id: int(first[10] or 0)})
                except Exception as exc:
                    logger.warning("realtime: catalog reload failed: %s", exc)
                    yield Event(
                        "error",
                        None,
                        {"code": "SERVICE_UNAVAILABLE", "message": "catch-up failed, reconnect"},
                    )
                    sub.close()
                    return
            for change in changes:
                if sub.closed:
                    return
                seen = sub.classify(change) if change.cursor > pos else None
                if seen is not None:
                    yield Event(seen.op, seen.cursor, {"change": seen})
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
            from gateway.metadata.cache import load_catalog

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
        self.stats.held_back_s = float(first[12] or 0.0)
        changes = [
            change_from_row(r[8], r[9], r, 2, r[10], owner=r[13]) for r in rows if r[2] is not None
        ]
        versions = {r[8]: int(r[11] or 0) for r in rows if r[2] is not None}
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
                    seen = sub.classify(change)
                except Exception:  # a filter must never stop the poller for everyone
                    logger.exception("realtime: filter evaluation failed")
                    seen = None
                if seen is not None:
                    sub.offer(seen)
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
