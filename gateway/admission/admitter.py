"""Admission: one database round trip decides whether a keyed request may run.

``Admitter.admit(conn, key, cost)`` calls ``gateway.admit(...)`` (migration 0002) once, on
an autocommit pool connection: the key is validated, the project's rate limit and daily
quota are checked and incremented by one atomic upsert that commits on its own, before
the tenant query starts. The answer is an ``Admission`` (who is asking, and the
rate-limit numbers for the response headers) or a ``GatewayError``.

Local deny: once the database has said that a project is over its rate limit in the
current window (no room left even for one request), this instance answers 429 for that
key locally until the moment the database said room could appear again — no round
trip. It never admits anything locally, so the limit stays exact. The local deny is
dropped by ``forget_project`` (called on NOTIFY of limit/status/key changes) and, while
no invalidation channel is live, it is re-checked with the database at least once a
second.

When the database can't decide within ``GATEWAY_ADMISSION_TIMEOUT_MS`` the answer is
503 ``SERVICE_UNAVAILABLE`` with ``Retry-After: 1``: never a hang, never a free pass.

No Starlette here: the pipeline can be driven from tests and benchmarks without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import tuple_row

from gateway.admission.decision import Admission, QuotaExceeded
from gateway.admission.headers import rate_limit_headers
from gateway.auth.keys import hash_key
from gateway.errors import GatewayError, service_unavailable
from gateway.metadata.catalog import Principal
from gateway.quotas.plans import violations_for
from gateway.settings import Settings

logger = logging.getLogger("gateway.admission")

ADMIT_SQL = "SELECT * FROM gateway.admit(%s, %s, %s, %s, %s, %s)"
LOOKUP_SQL = "SELECT * FROM gateway.lookup_key(%s)"

# While no invalidation channel (LISTEN/NOTIFY) is live, a local deny is re-checked with
# the database at least this often, so a raised limit or a new key takes effect quickly.
UNVERIFIED_DENY_CAP_S = 1.0
# After a timeout the cancelled call gets this long to finish before its connection is
# closed (psycopg would otherwise wait up to 5 s + 5 s for an unreachable server).
CANCEL_GRACE_S = 0.25
LOCAL_DENY_MAX_ENTRIES = 100_000

_KEY_ERRORS = {
    "invalid_key": ("INVALID_API_KEY", "Invalid API key"),
    "revoked": ("REVOKED_API_KEY", "API key has been revoked"),
    "expired": ("EXPIRED_API_KEY", "API key has expired"),
    "suspended": ("PROJECT_SUSPENDED", "Project is suspended"),
}


@dataclass(slots=True)
class _LocalDeny:
    """The database said: this key's project has no room even for one request until
    ``reset_mono`` (rate limit: the window's reset; daily quota: UTC midnight)."""

    project_id: str
    key_id: str
    check_until: float  # monotonic: ask the database again from here on
    reset_mono: float  # monotonic: when the database said room appears again
    # the rate-limit numbers of the database's answer, for the headers
    limit: int
    remaining: int
    rate_reset_mono: float
    rate_reset_epoch: int
    window_s: int
    # the violations when a quota is the reason (daily requests used up and/or the month's
    # bandwidth): both only grow until their reset, so they hold until then
    violations: list[dict[str, Any]] | None = None
    probe_at: float | None = None  # monotonic: a probe request is asking the database


def _seconds(value: float) -> int:
    """Whole seconds, rounded up, at least 1 (Retry-After and ``t``)."""
    return max(1, math.ceil(value - 1e-9))


class Admitter:
    """Runs the admission statement and keeps this instance's local denies."""

    def __init__(
        self,
        settings: Settings,
        *,
        invalidation_live: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.invalidation_live: Callable[[], bool] = invalidation_live or (lambda: False)
        self.clock = clock
        self.enabled = settings.admission_enabled
        self.sliding = settings.rate_limit_algorithm == "sliding"
        self.window_s = settings.rate_limit_window_s
        self.timeout_s = settings.admission_timeout_ms / 1000.0
        # a probe that hasn't answered by then is presumed lost: the next request probes
        self.probe_timeout_s = self.timeout_s + 2 * CANCEL_GRACE_S + 0.5
        # the server gives up on a held counter row a little before the client does, so
        # the usual timeout is a clean error (connection reusable), not a cancellation
        self.lock_timeout_ms = max(1, int(settings.admission_timeout_ms * 0.8))
        self.prepare = settings.db_pooler != "transaction"
        # a refusal for the database size can lift at the next sample (Retry-After)
        self.db_size_sample_s = float(settings.db_size_sample_s)
        self._denies: dict[str, _LocalDeny] = {}
        self._denied_keys_by_project: dict[str, set[str]] = {}
        self._stats: dict[str, int] = {
            "local_denied": 0,
            "db_decisions": 0,
            "db_admitted": 0,
            "db_rate_limited": 0,
            "db_quota_exceeded": 0,
            "db_key_refused": 0,
            "unavailable": 0,
        }

    # --- public -------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {**self._stats, "local_deny_entries": len(self._denies)}

    def forget_project(self, project_id: str) -> None:
        """Drop this project's local denies (its limits, status or keys changed)."""
        for key_hash in self._denied_keys_by_project.pop(str(project_id), ()):
            self._denies.pop(key_hash, None)

    def forget_all(self) -> None:
        """Drop every local deny (e.g. the invalidation channel reconnected)."""
        self._denies.clear()
        self._denied_keys_by_project.clear()

    def check_local(self, key: str | None) -> str:
        """Raise the local 429 if this key's project is known to be over its limit.

        Costs no database round trip and no pool connection; returns the key's hash, to
        pass on to ``admit(..., key_hash=...)`` (routes call this before they acquire a
        connection). When a deny's one-second cap has passed but the database's reset
        hasn't, ONE request (the probe) goes to the database while the others keep
        being refused locally until its answer is in.
        """
        if not key:
            raise GatewayError("INVALID_API_KEY", "Missing API key", status=401)
        key_hash = hash_key(key)
        if self._denies:
            deny = self._denies.get(key_hash)
            if deny is not None:
                now = self.clock()
                if now < deny.reset_mono and (
                    now < deny.check_until
                    or (deny.probe_at is not None and now - deny.probe_at < self.probe_timeout_s)
                ):
                    self._stats["local_denied"] += 1
                    error = self._local_answer(deny, now)
                    raise _tag(error, deny.project_id, deny.key_id, "local_deny")
                if now < deny.reset_mono:
                    deny.probe_at = now  # this request asks the database for everyone
                else:
                    self._drop(key_hash, deny)  # the window has reset
        return key_hash

    async def admit(
        self,
        conn: AsyncConnection[Any],
        key: str | None,
        cost: int = 1,
        *,
        key_hash: str | None = None,
        grows: bool = False,
    ) -> Admission:
        """Decide a request of ``cost`` units (a batch of N queries costs N).

        ``key_hash``: the caller already ran ``check_local`` for this request.
        ``grows``: the request inserts or updates (refused while the project is over its
        database size; see gateway/quotas).
        """
        if key_hash is None:
            key_hash = self.check_local(key)
        if cost < 1:
            raise ValueError("cost must be at least 1")
        if not conn.autocommit:
            # the upsert must commit on its own (and its synchronous_commit=off must not
            # leak into a caller's transaction)
            raise RuntimeError("admission needs an autocommit connection")
        if not self.enabled:
            row = await self._call(conn, LOOKUP_SQL, (key_hash,))
            return self._key_only(row)
        sent_at = self.clock()
        try:
            row = await self._call(
                conn,
                ADMIT_SQL,
                (key_hash, cost, self.window_s, self.sliding, self.lock_timeout_ms, grows),
            )
        except BaseException:
            deny = self._denies.get(key_hash)
            if deny is not None:
                deny.probe_at = None  # the probe failed: the next request probes again
            raise
        return self._decide(row, key_hash, sent_at, cost=cost, grows=grows)

    # --- the round trip -----------------------------------------------------------------

    async def _call(
        self, conn: AsyncConnection[Any], query: str, params: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        """One bounded round trip: a timeout or a lost connection is a fast 503."""
        task = asyncio.ensure_future(self._execute(conn, query, params))
        try:
            done, _ = await asyncio.wait((task,), timeout=self.timeout_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            try:
                return task.result()
            except psycopg.errors.LockNotAvailable:
                self._stats["unavailable"] += 1
                raise service_unavailable(
                    "Admission timed out waiting for the project's counter"
                ) from None
            except psycopg.OperationalError as exc:
                self._stats["unavailable"] += 1
                logger.warning("admission failed: %s", type(exc).__name__)
                # chained: gateway.pool.run_with_retry sees the lost connection behind the
                # 503 and runs the request once more on a fresh one when that is safe
                raise service_unavailable("Admission is unavailable: try again") from exc
        # timed out: cancel on the server; give it a moment, then close the connection
        self._stats["unavailable"] += 1
        task.cancel()
        done, _ = await asyncio.wait((task,), timeout=CANCEL_GRACE_S)
        if not done:
            task.cancel()  # a second interrupt makes psycopg close the connection
            await asyncio.wait((task,), timeout=CANCEL_GRACE_S)
        task.add_done_callback(_swallow)
        if not task.done():
            with contextlib.suppress(Exception):
                conn.pgconn.finish()
        raise service_unavailable("Admission timed out")

    async def _execute(
        self, conn: AsyncConnection[Any], query: str, params: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(query, params, prepare=self.prepare)
            row = await cur.fetchone()
        assert row is not None
        return row

    # --- decisions ----------------------------------------------------------------------

    def _key_only(self, row: tuple[Any, ...]) -> Admission:
        outcome = row[0]
        if outcome != "admitted":
            self._stats["db_key_refused"] += 1
            code, message = _KEY_ERRORS[outcome]
            raise GatewayError(code, message)
        return Admission(
            project_id=str(row[1]),
            schema_name=row[2],
            key_id=str(row[3]),
            principal=Principal(row[4], frozenset(row[5] or ())),
        )

    def _decide(
        self,
        row: tuple[Any, ...],
        key_hash: str,
        sent_at: float,
        *,
        cost: int = 1,
        grows: bool = False,
    ) -> Admission:
        (
            outcome,
            project_id,
            schema_name,
            key_id,
            key_type,
            scopes,
            rate_limit,
            _rate_used,
            remaining,
            reset_at,
            reset_in,
            window_s,
            quota_used,
            quota_limit,
            day_reset_in,
            # quotas (0010)
            bandwidth_used,
            bandwidth_limit,
            db_size_used,
            db_size_limit,
            month_reset_in,
        ) = row[:20]
        self._stats["db_decisions"] += 1
        violations: list[dict[str, Any]] = []
        requests_full = bandwidth_over = False
        if outcome == "quota_exceeded":
            violations = violations_for(
                cost=cost,
                grows=grows,
                requests=(quota_used, quota_limit),
                bandwidth=(bandwidth_used, bandwidth_limit),
                database=(db_size_used, db_size_limit),
            )
            requests_full = quota_limit is not None and quota_used >= quota_limit
            bandwidth_over = bandwidth_limit is not None and bandwidth_used >= bandwidth_limit
        full = (outcome == "rate_limited" and remaining == 0) or requests_full or bandwidth_over
        if not full:
            # the database answered something else than "full": no local deny for this key
            deny = self._denies.get(key_hash)
            if deny is not None:
                self._drop(key_hash, deny)
        if outcome in _KEY_ERRORS:
            self._stats["db_key_refused"] += 1
            code, message = _KEY_ERRORS[outcome]
            raise GatewayError(code, message)
        project_id = str(project_id)
        reset_epoch = math.ceil(reset_at)
        t = _seconds(reset_in)
        if outcome == "admitted":
            self._stats["db_admitted"] += 1
            return Admission(
                project_id=project_id,
                schema_name=schema_name,
                key_id=str(key_id),
                principal=Principal(key_type, frozenset(scopes or ())),
                rate_limit=rate_limit,
                rate_remaining=remaining,
                rate_reset_epoch=reset_epoch,
                rate_reset_in=t,
                window_s=window_s,
                quota_used=quota_used,
                quota_limit=quota_limit,
            )
        if outcome == "rate_limited":
            self._stats["db_rate_limited"] += 1
            if remaining == 0:
                # not even one request fits until reset_in: deny locally until then.
                # Measured from when the call was SENT, so the local deny always ends at or
                # before the database's own reset (never denies what the database would admit).
                self._remember(
                    key_hash,
                    _LocalDeny(
                        project_id=project_id,
                        key_id=str(key_id),
                        check_until=sent_at + reset_in,
                        reset_mono=sent_at + reset_in,
                        limit=rate_limit,
                        remaining=0,
                        rate_reset_mono=sent_at + reset_in,
                        rate_reset_epoch=reset_epoch,
                        window_s=window_s,
                    ),
                )
            raise _tag(
                self._rate_limited(rate_limit, reset_epoch, t, window_s, remaining),
                project_id,
                str(key_id),
                "rate_limited",
            )
        if outcome == "quota_exceeded":
            self._stats["db_quota_exceeded"] += 1
            if not violations:  # can't happen: the statement and violations_for agree
                violations = [
                    {
                        "type": "requests",
                        "used": quota_used,
                        "limit": quota_limit,
                        "percentUsed": 100.0,
                    }
                ]
            # when the refusal can lift: the day (requests), the month (bandwidth), the
            # next database-size sample (database) — all of them for several
            lifts = {
                "requests": day_reset_in,
                "bandwidth": month_reset_in,
                "database": self.db_size_sample_s,
            }
            retry = max(_seconds(lifts.get(v["type"], 1.0)) for v in violations)
            if full:
                # daily requests used up / the month's bandwidth spent: usage only grows
                # until its reset (limits changes notify), so refuse locally until the
                # first of those resets; the database quota depends on the operation and
                # on the next sample, so a local answer never lists it
                local = [v for v in violations if v["type"] != "database"]
                until = min(
                    day_reset_in if requests_full else math.inf,
                    month_reset_in if bandwidth_over else math.inf,
                )
                self._remember(
                    key_hash,
                    _LocalDeny(
                        project_id=project_id,
                        key_id=str(key_id),
                        check_until=sent_at + until,
                        reset_mono=sent_at + until,
                        limit=rate_limit,
                        remaining=remaining,
                        rate_reset_mono=sent_at + reset_in,
                        rate_reset_epoch=reset_epoch,
                        window_s=window_s,
                        violations=local or violations,
                    ),
                )
            headers = rate_limit_headers(rate_limit, remaining, reset_epoch, t, window_s)
            headers["Retry-After"] = str(max(t, retry))
            raise _tag(
                QuotaExceeded(violations, headers),
                project_id,
                str(key_id),
                "quota_exceeded",
            )
        raise RuntimeError(f"unknown admission outcome {outcome!r}")

    def _local_answer(self, deny: _LocalDeny, now: float) -> GatewayError:
        if deny.violations is None:
            return self._rate_limited(
                deny.limit, deny.rate_reset_epoch, _seconds(deny.reset_mono - now), deny.window_s
            )
        # a used-up quota: requests refused for it consume nothing, so once the rate
        # window has rolled the window is empty again (exact for the fixed window; in
        # sliding mode the previous window's share is left out)
        remaining = deny.remaining
        reset_mono, reset_epoch = deny.rate_reset_mono, deny.rate_reset_epoch
        if now >= reset_mono:
            windows = math.floor((now - reset_mono) / deny.window_s) + 1
            remaining = deny.limit
            reset_mono += windows * deny.window_s
            reset_epoch += windows * deny.window_s
        t = _seconds(reset_mono - now)
        headers = rate_limit_headers(deny.limit, remaining, reset_epoch, t, deny.window_s)
        headers["Retry-After"] = str(max(t, _seconds(deny.reset_mono - now)))
        return QuotaExceeded(deny.violations, headers)

    def _rate_limited(
        self, limit: int, reset_epoch: int, t: int, window_s: int, remaining: int = 0
    ) -> GatewayError:
        headers = rate_limit_headers(limit, remaining, reset_epoch, t, window_s)
        headers["Retry-After"] = str(t)
        return GatewayError(
            "RATE_LIMIT_EXCEEDED",
            f"Rate limit exceeded: {limit} requests per {window_s} seconds",
            status=429,
            details={"limit": limit, "windowSeconds": window_s, "retryAfter": t},
            headers=headers,
        )

    # --- local denies -------------------------------------------------------------------

    def _remember(self, key_hash: str, deny: _LocalDeny) -> None:
        now = self.clock()
        if not self.invalidation_live():
            deny.check_until = min(deny.check_until, now + UNVERIFIED_DENY_CAP_S)
        if deny.check_until <= now:
            return
        if len(self._denies) >= LOCAL_DENY_MAX_ENTRIES:
            self._prune(now)
            if len(self._denies) >= LOCAL_DENY_MAX_ENTRIES:
                return  # still full of live denies: just ask the database
        old = self._denies.get(key_hash)
        if old is not None and old.project_id != deny.project_id:
            self._drop(key_hash, old)
        self._denies[key_hash] = deny
        self._denied_keys_by_project.setdefault(deny.project_id, set()).add(key_hash)

    def _drop(self, key_hash: str, deny: _LocalDeny) -> None:
        self._denies.pop(key_hash, None)
        keys = self._denied_keys_by_project.get(deny.project_id)
        if keys is not None:
            keys.discard(key_hash)
            if not keys:
                del self._denied_keys_by_project[deny.project_id]

    def _prune(self, now: float) -> None:
        for key_hash, deny in list(self._denies.items()):
            if deny.check_until <= now:
                self._drop(key_hash, deny)


def _tag(error: GatewayError, project_id: str, key_id: str, outcome: str) -> GatewayError:
    """A refusal after the key was recognised names its project and key (for the request
    log) and how it was decided (``rate_limited``, ``quota_exceeded`` or ``local_deny``)."""
    error.project_id = project_id  # type: ignore[attr-defined]
    error.key_id = key_id  # type: ignore[attr-defined]
    error.admission = outcome  # type: ignore[attr-defined]
    return error


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
