"""The jobs runtime of one instance: the delivery worker, the cron tick, retention, metrics.

Every ``gateway serve`` (and ``gateway worker``) runs one. The worker keeps at most
``GATEWAY_JOBS_CONCURRENCY`` deliveries in flight and at most
``GATEWAY_JOBS_PER_PROJECT`` of one project's. The last ``reserve_slots`` free slots are
handed out one per project, and only to projects with nothing running here: tenants with
hanging endpoints can't hold every slot, so another tenant's due job starts at once.
It claims with ``gateway.claim_jobs`` (``FOR UPDATE SKIP LOCKED``, fair across projects,
lease ``GATEWAY_JOBS_LEASE_S``),
renews the leases of what it runs every third of the lease, and sleeps until a NOTIFY on
``gateway_jobs`` (heard by the instance's listener connection), a finished delivery that
freed a slot while work was left, or the poll interval (``GATEWAY_JOBS_POLL_S``: delayed
jobs and a listener that is down). Database work of the worker goes through the pool,
at most ``db_connections`` checkouts at a time, so deliveries never hold a connection.

The cron tick runs every ``GATEWAY_JOBS_CRON_TICK_S`` (1 s) on every instance; the one that gets
``pg_try_advisory_xact_lock`` enqueues the due fires (see ``schedules.fire_due_schedules``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.jobs import delivery, rules, schedules, store
from gateway.settings import Settings

logger = logging.getLogger("gateway.jobs")

CHANNEL = "gateway_jobs"
CRON_GRACE_S = 10.0
ENDPOINT_TTL_S = 5.0
SHUTDOWN_GRACE_S = 5.0
FLUSH_TRIES = 5
DEPTH_STALE_S = 60.0
COUNTERS = ("enqueued", "started", "completed", "failed", "retried")

RELEASE_SQL = """
WITH r AS (
    UPDATE gateway.jobs
       SET status = 'pending', attempts_made = greatest(attempts_made - 1, 0),
           lease_until = NULL, locked_by = NULL, run_at = now()
     WHERE id = ANY(%s) AND status = 'active' AND locked_by = %s
    RETURNING id, project_id, concurrency_key
), k AS (
    DELETE FROM gateway.job_keys k USING r
     WHERE k.project_id = r.project_id AND k.key = r.concurrency_key AND k.job_id = r.id
)
SELECT count(*) FROM r
"""


def reserve_slots(concurrency: int) -> int:
    """Slots kept for projects that run nothing on this instance (a fifth, at least one).

    Without them two projects with hanging endpoints held every slot (the per-project cap
    was half the concurrency) and a third project's due job waited for a timeout.
    """
    if concurrency <= 0:
        return 0
    return max(1, concurrency // 5)


def claim_plan(
    concurrency: int, per_project: int, running: dict[str, int]
) -> tuple[int, int, dict[str, int]]:
    """What one claim round may take: ``(limit, per-project cap, running counts)``.

    While more than the reserve is free, any project may fill up to the reserve (under
    its cap). Within the reserve, the claim runs with a cap of one against the same
    running counts, so only a project with nothing running here gets a slot, one each.
    """
    busy = {p: n for p, n in running.items() if n > 0}
    free = concurrency - sum(busy.values())
    reserve = reserve_slots(concurrency)
    if free > reserve:
        return free - reserve, per_project, busy
    return max(free, 0), 1, busy


def db_connections(settings: Settings, pool_max: int) -> int:
    """Pooled connections the worker may hold at once (shown by ``gateway pool-plan``)."""
    if settings.jobs_concurrency == 0:
        return 1  # the cron tick
    return max(1, min(2, pool_max))


class JobsRuntime:
    def __init__(self, settings: Settings, extras: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.extras = extras if extras is not None else {}
        self.worker_id = settings.instance_id
        self.pool: AsyncConnectionPool | None = None
        self.counts: Counter[str] = Counter()
        self.running: dict[str, int] = {}
        self.inflight: dict[Any, dict[str, Any]] = {}
        self.depth: dict[str, float] = {}
        self.depth_at: float | None = None
        self.claims = 0
        self.cron_fired = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._backlog = False
        self._tasks: list[asyncio.Task[None]] = []
        self._deliveries: set[asyncio.Task[None]] = set()
        self._endpoints: dict[str, tuple[float, tuple[str, str, int] | None]] = {}
        self._outcomes: list[tuple[Any, ...]] = []
        self._flush_failures = 0
        self._db: asyncio.Semaphore | None = None
        # One HTTP client per delivery slot, each with a single keep-alive connection:
        # httpcore's pool scans every connection of a client on each request, so one
        # shared client with many connections costs O(slots) per delivery.
        self._clients = [delivery.make_client(1) for _ in range(settings.jobs_concurrency)]
        self._free_clients = list(range(settings.jobs_concurrency))
        metrics = self.extras.get("metrics")
        if metrics is not None:
            metrics.registry.register(_JobsCollector(self))
        maintenance = self.extras.get("maintenance")
        if maintenance is not None:
            self.install_maintenance(maintenance)

    # --- wiring -------------------------------------------------------------------------

    def install_maintenance(self, maintenance: Any) -> None:
        """Retention and the queue-depth sample are jobs of the maintenance leader."""

        async def jobs_retention(conn: AsyncConnection[Any]) -> int:
            # each batch commits on its own connection (an open xid holds realtime back)
            assert self.pool is not None
            async with self.pool.connection() as own:
                return await store.delete_expired(own, self.settings.jobs_retention_days)

        async def jobs_depth(conn: AsyncConnection[Any]) -> int:
            self.depth = await store.depth(conn)
            self.depth_at = time.monotonic()
            return int(self.depth.get("pending", 0))

        maintenance.register("jobs_retention", jobs_retention)
        maintenance.register("jobs_depth", jobs_depth)

    def wake(self, _payload: str | None = None) -> None:
        """A job became due (NOTIFY on ``gateway_jobs``), or the listener reconnected."""
        self._wake.set()

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def stats(self) -> dict[str, Any]:
        return {
            **{name: self.counts[name] for name in COUNTERS},
            "in_flight": len(self.inflight),
            "claims": self.claims,
            "cron_fired": self.cron_fired,
            "concurrency": self.settings.jobs_concurrency,
        }

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._stopping = False
        self._db = asyncio.Semaphore(db_connections(self.settings, pool.max_size))
        self._tasks.append(asyncio.create_task(self._cron_loop(), name="jobs-cron"))
        if self.settings.jobs_concurrency > 0:
            self._tasks.append(asyncio.create_task(self._claim_loop(), name="jobs-claim"))
            self._tasks.append(asyncio.create_task(self._renew_loop(), name="jobs-renew"))

    async def stop(self) -> None:
        """Stop claiming; give running deliveries a moment; put the rest back at once
        (their attempt is not counted) instead of waiting for their leases."""
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=SHUTDOWN_GRACE_S)
        for task in list(self._deliveries):
            task.cancel()
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=1.0)
        with contextlib.suppress(Exception):
            await self._flush()
        left = list(self.inflight)
        if left and self.pool is not None:
            with contextlib.suppress(Exception):
                async with self.pool.connection(timeout=2.0) as conn:
                    await conn.execute(RELEASE_SQL, (left, self.worker_id))
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.aclose()

    @contextlib.asynccontextmanager
    async def _conn(self) -> Any:
        assert self.pool is not None and self._db is not None
        async with self._db, self.pool.connection() as conn:
            yield conn

    # --- claiming -----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        poll_s = self.settings.jobs_poll_s
        while not self._stopping:
            self._wake.clear()
            limit, cap, running = claim_plan(
                self.settings.jobs_concurrency, self.settings.jobs_per_project, self.running
            )
            if limit > 0 or self._outcomes:
                try:
                    await self._flush()
                    jobs = await self._claim(limit, cap, running) if limit > 0 else []
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("jobs: claim failed: %s", _first_line(exc))
                    jobs = []
                    await asyncio.sleep(min(poll_s, 1.0))
                # a full round may leave more due work (and the reserve to hand out)
                self._backlog = limit > 0 and len(jobs) >= limit
                for job in jobs:
                    self._launch(job)
                if self._backlog:
                    continue  # more may be waiting: claim again as soon as a slot frees
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll_s)

    async def _claim(self, limit: int, cap: int, running: dict[str, int]) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            jobs = await store.claim(
                conn, self.worker_id, limit, cap, self.settings.jobs_lease_s, running
            )
            self.claims += 1
            now = time.monotonic()
            missing = sorted(
                {
                    str(j["project_id"])
                    for j in jobs
                    if str(j["project_id"]) not in self._endpoints
                    or self._endpoints[str(j["project_id"])][0] < now
                }
            )
            if missing:
                found = await store.endpoints(conn, missing)
                for project in missing:
                    self._endpoints[project] = (now + ENDPOINT_TTL_S, found.get(project))
        return jobs

    def _launch(self, job: dict[str, Any]) -> None:
        project = str(job["project_id"])
        self.running[project] = self.running.get(project, 0) + 1
        self.inflight[job["id"]] = job
        self.count("started")
        task = asyncio.create_task(self._run(job), name=f"job-{job['id']}")
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _run(self, job: dict[str, Any]) -> None:
        project = str(job["project_id"])
        try:
            endpoint = self._endpoints.get(project, (0.0, None))[1]
            if endpoint is None:
                attempt = delivery.Attempt(
                    False, error="no endpoint is set for this project (gateway jobs set-endpoint)"
                )
            else:
                slot = self._free_clients.pop()
                try:
                    attempt = await delivery.deliver(
                        self._clients[slot],
                        endpoint[0],
                        endpoint[1],
                        {**job, "timeout_ms": min(job["timeout_ms"], endpoint[2])},
                        allow_private=self.settings.jobs_allow_private_targets,
                    )
                finally:
                    self._free_clients.append(slot)
            # recorded by the claim loop, many outcomes in one statement, just before it
            # claims again: one round trip per round instead of one per job
            self._outcomes.append(
                store.outcome_row(
                    job,
                    ok=attempt.ok,
                    result=attempt.result,
                    error=attempt.error,
                    backoff_s=rules.backoff_s(job["attempts_made"]),
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("jobs: delivering %s failed unexpectedly", job["id"])
        finally:
            self.inflight.pop(job["id"], None)
            left = self.running.get(project, 1) - 1
            if left > 0:
                self.running[project] = left
            else:
                self.running.pop(project, None)
            if not self._stopping:
                self._wake.set()  # a slot (and maybe a project's cap) freed: claim again

    async def _flush(self) -> None:
        """Write the finished attempts' outcomes. On a database error they are kept for
        the next round (at most ``FLUSH_TRIES`` times; after that the lease runs out and
        the job is delivered again: at-least-once)."""
        if not self._outcomes:
            return
        rows, self._outcomes = self._outcomes, []
        try:
            async with self._conn() as conn:
                done = await store.finish_many(conn, self.worker_id, rows)
        except asyncio.CancelledError:
            self._outcomes = rows + self._outcomes
            raise
        except Exception as exc:
            logger.warning("jobs: recording %d outcomes failed: %s", len(rows), _first_line(exc))
            self._flush_failures += 1
            if self._flush_failures < FLUSH_TRIES:
                self._outcomes = rows + self._outcomes
            else:
                self._flush_failures = 0
            raise
        self._flush_failures = 0
        for outcome in done.values():
            self.count(outcome)

    async def _renew_loop(self) -> None:
        every = self.settings.jobs_lease_s / 3
        while not self._stopping:
            await asyncio.sleep(every)
            ids = list(self.inflight)
            if not ids:
                continue
            try:
                async with self._conn() as conn:
                    await store.renew(conn, self.worker_id, ids, self.settings.jobs_lease_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("jobs: lease renewal failed: %s", _first_line(exc))

    # --- cron ---------------------------------------------------------------------------

    async def cron_tick(self) -> int:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s)", (schedules.CRON_LOCK_KEY,)
            )
            row = await cur.fetchone()
            if not row or not row[0]:
                return 0
            fired = await schedules.fire_due_schedules(conn, CRON_GRACE_S)
        self.cron_fired += fired
        self.count("enqueued", fired)
        return fired

    async def _cron_loop(self) -> None:
        while not self._stopping:
            # just after each whole second: a fire time is due the moment it passes
            tick = self.settings.jobs_cron_tick_s
            await asyncio.sleep(tick - (time.time() % tick) + 0.01)
            try:
                await self.cron_tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("jobs: cron tick failed: %s", _first_line(exc))


class _JobsCollector(Collector):
    def __init__(self, runtime: JobsRuntime) -> None:
        self.runtime = runtime

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        rt = self.runtime
        for name in COUNTERS:
            fam = CounterMetricFamily(
                f"gateway_jobs_{name}", f"Jobs {name} by this instance", value=rt.counts[name]
            )
            yield fam
        yield GaugeMetricFamily(
            "gateway_jobs_in_flight", "Deliveries running on this instance", value=len(rt.inflight)
        )
        fresh = rt.depth_at is not None and time.monotonic() - rt.depth_at < DEPTH_STALE_S
        if fresh:
            depth = GaugeMetricFamily(
                "gateway_jobs_queue_depth",
                "Jobs by state, cluster-wide (sampled by the maintenance leader)",
                labels=["state"],
            )
            for state in ("pending", "delayed", "active", "completed", "failed", "cancelled"):
                depth.add_metric([state], rt.depth.get(state, 0.0))
            yield depth
            yield GaugeMetricFamily(
                "gateway_jobs_oldest_pending_seconds",
                "Age of the oldest due job not yet claimed (sampled by the maintenance leader)",
                value=rt.depth.get("oldest_pending_s", 0.0),
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
