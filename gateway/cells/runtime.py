"""``CellRuntime``: what one instance holds for one cell (one PostgreSQL database), and
``Cells``: all of them, and the route from a request's key to one.

Everything the request path needs for a project lives in its cell, so each cell has its
own pool (sized from that cell's connection budget), LISTEN connection, catalog cache,
admitter, pipeline, realtime hub, job worker, auth service and maintenance leader.
``home`` (the control database) is always there and is built by the app's lifespan with
the instance-wide pieces (request log, metrics, bandwidth); a single-database deployment
has only ``home`` and never consults the router.

Lifecycle of a remote cell (``open_cell`` / ``CellRuntime.close``): the pool opens in the
background (a cell that is down at start never keeps the instance from starting), the
listener connects in the background, and while the listener is NOT connected the cell
counts as down: its projects are answered 503 at once, without waiting for the pool's
timeout (``Pipeline.reachable``). The listener reconnects by itself, and with it the cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.admission.admitter import Admitter
from gateway.auth import store as auth_store
from gateway.auth.keys import hash_key
from gateway.auth.passwords import Hasher
from gateway.auth.service import AuthService
from gateway.cells.directory import HOME, Cell
from gateway.cells.router import CellRouter
from gateway.db.budget import PlanError, PoolPlan, plan_pool, static_plan
from gateway.db.pool import create_pool, discover_limits
from gateway.errors import GatewayError, service_unavailable
from gateway.jobs.worker import CHANNEL as JOBS_CHANNEL
from gateway.jobs.worker import JobsRuntime
from gateway.metadata.cache import MetadataCache
from gateway.metadata.listener import MetadataListener
from gateway.ops.maintenance import ConnectionSampler, Maintenance, install_default_jobs
from gateway.ops.request_log import STOP_TIMEOUT_S, RequestLog
from gateway.query.pipeline import Pipeline
from gateway.quotas import dbsize
from gateway.quotas.bandwidth import BandwidthMeter
from gateway.realtime import lifecycle as realtime_lifecycle
from gateway.realtime.hub import RealtimeHub
from gateway.settings import Settings

logger = logging.getLogger("gateway.cells")

DIRECTORY_CHANNEL = "gateway_directory"
# how long a remote cell's budget discovery may take at start before the static plan
DISCOVERY_TIMEOUT_S = 3.0
# after a project moved: time for the hubs' next poll to send the old cell's last changes
STREAMS_END_AFTER_S = 1.0

CELLS_SQL = """
SELECT name, database_url, direct_url, max_connections, status, 0
  FROM gateway.cells ORDER BY name
"""


@dataclass
class CellRuntime:
    """One cell's resources in this instance. ``settings`` are the instance's settings
    with the cell's URLs (``Cell.settings``)."""

    name: str
    settings: Settings
    pool: AsyncConnectionPool | None = None
    pool_plan: PoolPlan | None = None
    pipeline: Pipeline | None = None
    admitter: Admitter | None = None
    metadata: MetadataCache | None = None
    listener: MetadataListener | None = None
    realtime: RealtimeHub | None = None
    jobs: Any = None  # gateway.jobs.worker.JobsRuntime
    auth: Any = None  # gateway.auth.service.AuthService
    bandwidth: BandwidthMeter | None = None
    maintenance: Maintenance | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        """False while the cell's database is known to be unreachable (its LISTEN
        connection is down): requests for its projects get 503 at once."""
        return self.name == HOME or self.listener is None or self.listener.connected

    def stats(self) -> dict[str, Any]:
        pool_stats = self.pool.get_stats() if self.pool is not None else {}
        return {
            "available": int(self.available),
            "pool_size": pool_stats.get("pool_size", 0),
            "pool_available": pool_stats.get("pool_available", 0),
            "requests_waiting": pool_stats.get("requests_waiting", 0),
            "connections_errors": pool_stats.get("connections_errors", 0),
            "pool_max": self.pool_plan.pool_max if self.pool_plan else 0,
        }

    async def close(self) -> None:
        """Stop in reverse order of ``open_cell``; home is closed by the app's lifespan."""
        if self.jobs is not None:
            await self.jobs.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self.maintenance is not None:
            await self.maintenance.stop()
        if self.realtime is not None:
            await self.realtime.stop()
        if self.auth is not None:
            self.auth.close()
        request_log = self.extras.get("request_log")
        if request_log is not None:
            # a cell that is down can't take its buffered rows: don't hold the shutdown
            await request_log.stop(timeout=STOP_TIMEOUT_S if self.available else 0.5)
        if self.pool is not None:
            await self.pool.close()


async def cell_plan(cell: Cell, settings: Settings) -> PoolPlan:
    """A cell's pool plan: its recorded budget (``cells.max_connections``), else the one
    discovered from its database like home's, else (database down at start) the static
    default; always divided by ``GATEWAY_INSTANCES``."""
    if cell.max_connections is not None:
        reserved = settings.db_reserved_connections
        return plan_pool(
            settings, cell.max_connections, 3 if reserved is None else reserved, source="cell"
        )
    try:
        limits = await discover_limits(settings, timeout=DISCOVERY_TIMEOUT_S)
    except psycopg.OperationalError:
        return static_plan(settings)
    max_connections, reserved, source = limits
    return plan_pool(settings, max_connections, reserved, source=source)


def listening_caches(
    settings: Settings, pool: AsyncConnectionPool | None
) -> tuple[MetadataCache, MetadataListener, Admitter]:
    """A cell's catalog cache, the LISTEN connection that invalidates it, and its admitter,
    wired together: a NOTIFY of a project's tables drops its catalog, one of its limits,
    status or keys drops its local denies (all of them after a reconnect), and while the
    listener is down the denies are re-checked with the database at least once a second.
    Home's (``pool`` None until the app's lifespan opens it) and every remote cell's."""
    metadata = MetadataCache(settings, pool=pool)
    listener = MetadataListener(
        settings, on_project=metadata.invalidate, on_all=metadata.invalidate_all
    )
    metadata.attach_listener(listener)
    admitter = Admitter(settings, invalidation_live=lambda: listener.connected)
    listener.add_callbacks(on_project=admitter.forget_project, on_all=admitter.forget_all)
    return metadata, listener, admitter


def start_realtime(
    settings: Settings, pool: AsyncConnectionPool, extras: dict[str, Any]
) -> RealtimeHub:
    """A cell's realtime hub: it polls only while someone subscribes, its retention is a
    job of the maintenance leader, its figures a metrics source, and SIGTERM drains it."""
    hub = RealtimeHub(settings, pool)
    realtime_lifecycle.install(hub, extras)
    realtime_lifecycle.drain_on_signals(hub)
    return hub


async def open_cell(cell: Cell, control: Settings, *, hasher: Hasher | None = None) -> CellRuntime:
    """Build and start one remote cell's runtime; never waits for its database."""
    settings = cell.settings(control)
    runtime = CellRuntime(name=cell.name, settings=settings)
    try:
        runtime.pool_plan = await cell_plan(cell, settings)
    except PlanError as exc:
        logger.error("cell %s: %s; using the static plan", cell.name, exc)
        runtime.pool_plan = static_plan(settings)
    pool = create_pool(settings, runtime.pool_plan)
    runtime.pool = pool
    await pool.open(wait=False)
    metadata, listener, admitter = listening_caches(settings, pool)
    runtime.metadata, runtime.listener, runtime.admitter = metadata, listener, admitter
    runtime.pipeline = Pipeline(
        settings, pool, metadata=metadata, admitter=admitter, cell=cell.name
    )
    # its requests get 503 at once while the cell is down: the runtime decides that once,
    # for the pipeline, /readyz and the metrics alike
    runtime.pipeline.reachable = lambda: runtime.available
    # the cell's own maintenance leader (elected in the cell's database): retention of
    # its change log, jobs, sessions (the instance's bandwidth meter writes to every cell)
    maintenance = Maintenance(settings, pool)
    install_default_jobs(maintenance, ConnectionSampler())
    runtime.maintenance = maintenance
    runtime.extras["maintenance"] = maintenance
    runtime.realtime = start_realtime(settings, pool, runtime.extras)
    runtime.jobs = JobsRuntime(settings, runtime.extras)
    listener.add_channel(JOBS_CHANNEL, runtime.jobs.wake)
    runtime.auth = AuthService(settings, runtime.pipeline, hasher=hasher)
    window_s = settings.auth.throttle_window_s

    async def auth_cleanup(conn: psycopg.AsyncConnection[Any]) -> int:
        return await auth_store.cleanup(conn, window_s)

    maintenance.register("auth_cleanup", auth_cleanup, every_s=60.0)
    # storage quotas of the cell's projects: sampled by the cell's own leader
    runtime.extras["db_size"] = dbsize.install(maintenance, settings.db_size_sample_s)
    # the request log of the cell's projects lives in the cell (written by this instance)
    request_log = RequestLog(settings, pool)
    runtime.extras["request_log"] = request_log
    request_log.start()
    maintenance.start()
    await listener.start()
    await runtime.jobs.start(pool)
    logger.info("cell %s opened: %s", cell.name, runtime.pool_plan.summary())
    return runtime


class Cells:
    """The instance's cells by name, and the way from a request's key to its cell."""

    def __init__(self, control: Settings) -> None:
        self.control = control
        self.runtimes: dict[str, CellRuntime] = {}
        self.router = CellRouter(None)
        self.hasher: Hasher | None = None
        self._sync_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def home(self) -> CellRuntime:
        return self.runtimes[HOME]

    @property
    def single(self) -> bool:
        """Only home: every key is home's, nothing to look up."""
        return len(self.runtimes) <= 1

    def attach_home(self, home: CellRuntime, hasher: Hasher | None) -> None:
        """Home is built by the app's lifespan; its pool answers the directory lookups and
        its listener carries the directory's notifications."""
        self.runtimes[HOME] = home
        self.hasher = hasher
        listener = home.listener
        self.router = CellRouter(
            home.pool, live=(lambda: listener.connected) if listener is not None else lambda: True
        )
        if listener is not None:
            listener.add_channel(DIRECTORY_CHANNEL, self.on_notify)
            listener.add_callbacks(on_all=self.router.forget_all)

    async def open_remote(self) -> None:
        """Make this instance's runtimes match the directory (at start, and on NOTIFY
        ``cells``): start one for every new cell, stop those of removed cells. Serialized,
        so two notifications never build one cell twice; new cells open concurrently, so
        cells that are down (each may spend ``DISCOVERY_TIMEOUT_S`` on its budget) delay
        the start by that once, not once per cell."""
        async with self._sync_lock:
            cells = await self._read_directory()
            if cells is None:
                return
            wanted = {cell.name for cell in cells}
            gone = [n for n in self.runtimes if n != HOME and n not in wanted]
            for name in gone:
                runtime = self.runtimes.pop(name)
                logger.info("cell %s left the directory: stopping its runtime", name)
                with contextlib.suppress(Exception):
                    await runtime.close()
            new = [c for c in cells if not c.is_home and c.name not in self.runtimes]
            opened = await asyncio.gather(
                *(open_cell(cell, self.control, hasher=self.hasher) for cell in new),
                return_exceptions=True,
            )
            for cell, result in zip(new, opened, strict=True):
                if isinstance(result, BaseException):
                    # a bad URL must not stop the instance or the others; the type only:
                    # a connection error's text may carry the URL
                    logger.error(
                        "cell %s: could not be opened: %s", cell.name, type(result).__name__
                    )
                else:
                    self.runtimes[cell.name] = result

    async def _read_directory(self) -> list[Cell] | None:
        """The directory's cells, or None (logged) when control can't be read: the
        runtimes stay as they are until the next notification."""
        home = self.home
        assert home.pool is not None
        try:
            async with home.pool.connection() as conn:
                cur = await conn.execute(CELLS_SQL)
                rows = await cur.fetchall()
        except psycopg.Error as exc:
            logger.warning("cells: the directory could not be read: %s", exc)
            return None
        return [
            Cell(name, url, direct, budget, status) for name, url, direct, budget, status, _ in rows
        ]

    def on_notify(self, payload: str) -> None:
        self.router.on_notify(payload)
        loop = asyncio.get_running_loop()
        # "*": the listener reconnected and may have missed a 'cells' notification
        if payload in ("cells", "*"):
            task = loop.create_task(self.open_remote())
            # held until done: a bare task may be garbage-collected mid-way
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif payload.startswith("project:"):
            # a project placed or moved: its streams end (after the hubs' next poll has sent
            # the old cell's last changes) and their clients reconnect to its cell
            project_id = payload.removeprefix("project:")
            loop.call_later(STREAMS_END_AFTER_S, self._end_streams, project_id)

    def _end_streams(self, project_id: str) -> None:
        for runtime in self.runtimes.values():
            if runtime.realtime is not None:
                runtime.realtime.end_streams(project_id)

    async def close_remote(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        async with self._sync_lock:
            for name, runtime in list(self.runtimes.items()):
                if name != HOME:
                    with contextlib.suppress(Exception):
                        await runtime.close()
                    del self.runtimes[name]

    def request_log_for(self, name: str) -> RequestLog | None:
        """A remote cell's request log (home's is the instance's own)."""
        runtime = self.runtimes.get(name)
        return runtime.extras.get("request_log") if runtime is not None else None

    def readiness(self) -> dict[str, str]:
        """Each cell "up" or "down" for /readyz's body: a cell other than home being down
        does not make the instance unready (its projects get 503, the others are served)."""
        return {name: "up" if r.available else "down" for name, r in self.runtimes.items()}

    # --- the request path ------------------------------------------------------------------

    async def runtime_for(self, key: str | None) -> CellRuntime:
        """The runtime of the key's cell; 503 ``SERVICE_UNAVAILABLE`` (Retry-After 1) when
        that cell is unknown to this instance or the directory can't be read. A cell that
        is down is refused by its own pipeline (``Pipeline.reachable``), so the refusal
        names the cell in the metrics."""
        return (await self.route(key))[0]

    async def route(self, key: str | None) -> tuple[CellRuntime, str | None]:
        """``runtime_for``, with the key's hash when routing needed it (several cells), so
        that the request's pipeline does not hash the key again; ``None`` otherwise."""
        if self.single or not key:
            return self.home, None
        key_hash = hash_key(key)
        return await self.runtime_for_hash(key_hash), key_hash

    async def runtime_for_hash(self, key_hash: str) -> CellRuntime:
        if self.single:
            return self.home
        try:
            name = await self.router.cell_of(key_hash)
        except (psycopg.OperationalError, GatewayError):
            raise service_unavailable(
                "the project directory is unavailable, retry shortly"
            ) from None
        return self.runtime_named(name)

    def runtime_named(self, name: str) -> CellRuntime:
        runtime = self.runtimes.get(name)
        if runtime is None:
            raise service_unavailable("the project's database is unavailable, retry shortly")
        return runtime

    def remote_pools(self) -> list[AsyncConnectionPool]:
        """The pools of the cells other than home (the bandwidth meter writes to them)."""
        return [r.pool for name, r in self.runtimes.items() if name != HOME and r.pool is not None]

    def stats(self) -> dict[str, Any]:
        return {
            "router": self.router.stats(),
            "cells": {name: runtime.stats() for name, runtime in self.runtimes.items()},
        }
