"""Realtime fan-out: one poller per instance over ``gateway.changes``, a queue per subscriber.

Capture (migrations 0005, 0017) appends every change of a realtime table to
``gateway.changes`` and numbers the writing transaction at commit. This module reads that
log (with the statements of ``changelog.py``) and fans it out:

* **One cursor per instance.** ``RealtimeHub`` keeps one cursor ``(seq, id)`` and polls
  only for the projects that have subscribers on this instance, up to the commit
  barrier's horizon, so nothing is ever skipped (``changelog.py`` says why). It polls again at once
  while pages are full, backs off to ``realtime_poll_max_ms`` when idle, and does not
  poll at all without subscribers. Cost grows with instances, not with subscribers.
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
  per project, the largest ``(seq, id)`` it deleted; a resume cursor below it would have
  a gap, so the subscriber gets a ``reset`` event carrying a fresh cursor instead.
* **Permissions** are the caller's: each subscription has a ``columns`` callable giving
  the columns the key may read *now* (from the metadata cache), applied to each event as
  it is sent, so a column made sensitive disappears from the next event.

Nothing here knows HTTP; ``sse_stream`` turns a subscription into ``text/event-stream``
bytes for the route. ``lifecycle.py`` hooks the hub into the instance (metrics, retention,
shutdown signals).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.errors import GatewayError, service_unavailable
from gateway.metadata.cache import load_catalog
from gateway.metadata.catalog import ProjectCatalog
from gateway.realtime import evaluation
from gateway.realtime.changelog import PAGE_MAX_BYTES, read_catch_up, read_head, read_poll
from gateway.realtime.evaluation import Verdict, verdict, verdicts_off_loop
from gateway.realtime.events import Change, Cursor, Event
from gateway.realtime.filter_worker import spec_of
from gateway.realtime.filters import FilterLike, compile_filters
from gateway.realtime.stats import HubStats
from gateway.realtime.subscription import ColumnsFn, Subscription
from gateway.settings import Settings

logger = logging.getLogger("gateway.realtime")

PAGE_SIZE = 500
CATCHUP_PAGE_SIZE = 500
POLL_MIN_MS = 5
LINGER_S = 0.5  # keep polling at the minimum interval this long after the last change


class RealtimeHub:
    """The instance's poller and its subscribers (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        *,
        page_size: int = PAGE_SIZE,
        catchup_page_size: int = CATCHUP_PAGE_SIZE,
        page_max_bytes: int = PAGE_MAX_BYTES,
        catalog_loader: Callable[[AsyncConnection[Any], str], Awaitable[ProjectCatalog]]
        | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        # a page never holds more than one subscriber queue: a backlog released at once
        # (after a long transaction ends) must not overflow subscribers that keep up
        self.page_size = max(1, min(page_size, settings.realtime_queue_max))
        self.catchup_page_size = catchup_page_size
        self.page_max_bytes = page_max_bytes  # row text per page, poll or catch-up
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
        self._load_catalog = catalog_loader or load_catalog

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
            "horizon_wait_s": s.horizon_wait_s,
            "horizon_busy": s.horizon_busy,
            "cursor": str(self._cursor) if self._cursor else None,
        }

    def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._run(), name="realtime-poller")

    def end_streams(self, project_id: str | None = None) -> None:
        """End every stream (of one project: it moved to another cell); each client
        reconnects with its Last-Event-ID, to another instance or the project's cell."""
        for sub in [s for s in self._subscribers if project_id in (None, s.project_id)]:
            sub.close()

    def drain(self) -> None:
        """Shutdown has begun: refuse new streams (503) and end every open one now, so
        clients reconnect to another instance at once instead of when the server gives up
        waiting for them."""
        self._stopped = True
        self.end_streams()
        self._poll_done.set()

    async def stop(self) -> None:
        """Stop polling and end every stream (each consumer returns at its next step)."""
        self._stopped = True
        self.end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._poll_done.set()  # a catch-up waiting for a poll sees it is closed
        evaluation.WORKER.stop()

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
        filters = tuple(filters)
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
            spec=spec_of(project_id, filters, column_types, owner) if filter_columns else None,
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

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscriber (its ``close``); the last one out stops the polling."""
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

    async def _ensure_cursor(self) -> Cursor:
        if self._cursor is not None:
            return self._cursor
        async with self._init_lock:
            if self._cursor is None:
                try:
                    head = await read_head(self.pool)
                except Exception as exc:
                    logger.warning("realtime: can't read the head cursor: %s", exc)
                    raise service_unavailable("realtime is unavailable, retry shortly") from None
                if self._cursor is None:
                    self._cursor = head
            assert self._cursor is not None
            return self._cursor

    async def catch_up(self, sub: Subscription) -> AsyncIterator[Event]:
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
                limits = (self.catchup_page_size, self.page_max_bytes)
                page = await read_catch_up(
                    self.pool, sub.project_id, sub.table, pos, target, *limits
                )
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
            if (page.pruned is not None and page.pruned > pos) or pos.seq > page.last_seq + 1:
                # changes after ``pos`` were deleted by retention (or the cursor is from
                # the future): the client must refetch and resume from a fresh cursor
                self.stats.resets += 1
                pos = self._cursor or target
                yield Event("reset", pos, {"cursor": str(pos)})
                continue
            changes = page.changes
            if changes:
                # as in a poll: the registry version read with these changes; a catalog
                # older than it (e.g. the one the stream was opened with) is reloaded
                # before they are sent
                try:
                    await self._refresh_catalogs({sub.project_id: page.version})
                except Exception as exc:
                    logger.warning("realtime: catalog reload failed: %s", exc)
                    yield Event(
                        "error",
                        None,
                        {"code": "SERVICE_UNAVAILABLE", "message": "catch-up failed, reconnect"},
                    )
                    sub.close()
                    return
            fresh = [c for c in changes if c.cursor > pos]
            if sub.filter_columns:
                seen_all = await verdicts_off_loop([(sub, c) for c in fresh])
            else:
                seen_all = [verdict(sub, c) for c in fresh]
            for seen in seen_all:
                if sub.closed:
                    return
                if isinstance(seen, GatewayError):
                    yield Event("error", None, {"code": seen.code, "message": seen.message})
                    sub.close()
                    return
                if seen is not None:
                    yield Event(seen.op, seen.cursor, {"change": seen})
            if changes:
                pos = max(pos, changes[-1].cursor)
            if not page.full:
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

    async def _filter_verdicts(self, changes: list[Change]) -> dict[Any, Verdict]:
        """Filtered live subscribers' verdicts on a page, by (subscription, change index)."""
        pairs: list[tuple[Subscription, Change]] = []
        keys: list[tuple[Subscription, int]] = []
        for i, change in enumerate(changes):
            for sub in self._index.get((change.project_id, change.table), ()):
                if sub.filter_columns and sub.live and change.cursor > sub.floor:
                    pairs.append((sub, change))
                    keys.append((sub, i))
        verdicts = await verdicts_off_loop(pairs)
        return dict(zip(keys, verdicts, strict=True))

    def _dispatch(self, changes: list[Change], verdicts: dict[Any, Verdict]) -> None:
        """Offer changes to live subscribers. Synchronous: runs between two awaits.

        ``verdicts`` were computed off the loop before; a subscriber that joined since
        (or has no filter) is classified here."""
        index = self._index
        for i, change in enumerate(changes):
            subs = index.get((change.project_id, change.table))
            if not subs:
                continue
            for sub in tuple(subs):
                if not sub.live or change.cursor <= sub.floor:
                    continue
                seen = verdicts.get((sub, i), self) if verdicts else self
                if seen is self:
                    seen = verdict(sub, change)
                if isinstance(seen, GatewayError):
                    sub.fail(seen)
                    continue
                if isinstance(seen, Change):
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
            verdicts: dict[Any, Verdict] = {}
            try:
                page = await read_poll(
                    self.pool, cursor, projects, self.page_size, self.page_max_bytes
                )
                self.stats.horizon_wait_s = page.horizon_wait_s
                if page.horizon is None:
                    self.stats.horizon_busy += 1
                # registry changed since the catalog we hold: reload before these changes
                # are sent (same snapshot as the rows, so never older than the write)
                await self._refresh_catalogs(page.versions)
                # filters are evaluated while the poll still counts as in flight, so a
                # subscriber joining meanwhile is dispatched to below (classified inline)
                verdicts = await self._filter_verdicts(page.changes)
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
            changes, horizon = page.changes, page.horizon
            self.stats.rows_polled += len(changes)
            self._dispatch(changes, verdicts)
            new = changes[-1].cursor if changes else cursor
            if changes:
                self.stats.last_change_age_s = changes[-1].age_s
            full = page.full
            if not full and horizon is not None:
                new = max(new, Cursor(horizon + 1, 0))  # all numbers <= horizon are read
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
