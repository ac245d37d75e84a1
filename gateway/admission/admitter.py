"""Admission: one database round trip decides whether a keyed request may run.

``Admitter.admit(conn, key, cost)`` calls ``gateway.admit(...)`` (gateway/db/sql/admit.sql)
once, on an autocommit pool connection: the key is validated, the project's rate limit and
daily quota are checked and incremented on its locked counter row, in a statement that
commits on its own, before the tenant query starts. The answer is an ``Admission`` (who
is asking, and the rate-limit numbers for the response headers) or a ``GatewayError``.

Local deny: once the database has said that a project is over its rate limit in the
current window (no room left even for one request), this instance answers 429 for that
key locally until the moment the database said room could appear again — no round
trip. It never admits anything locally, so the limit stays exact. The local deny is
dropped by ``forget_project`` (called on NOTIFY of limit/status/key changes) and, while
no invalidation channel is live, it is re-checked with the database at least once a
second. The bookkeeping lives in ``gateway/admission/local_deny.py``; ``deny_early`` lets
the HTTP front answer such a request before routing and body reading.

When the database can't decide within ``GATEWAY_ADMISSION_TIMEOUT_MS`` the answer is
503 ``SERVICE_UNAVAILABLE`` with ``Retry-After: 1``: never a hang, never a free pass.
The statements and that bounded round trip live in ``gateway/admission/statement.py``;
this module decides what the row they return means.

No Starlette here: the pipeline can be driven from tests and benchmarks without HTTP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from psycopg import AsyncConnection

from gateway.admission.coalescer import Coalescer
from gateway.admission.decision import Admission, AdmissionRow, QuotaExceeded
from gateway.admission.headers import rate_limit_headers
from gateway.admission.local_deny import LocalDenies, LocalDeny, rate_limited_error, seconds_up
from gateway.admission.statement import AdmissionStatement
from gateway.auth.keys import hash_key
from gateway.db.wire import CANCEL_GRACE_S
from gateway.errors import GatewayError
from gateway.metadata.catalog import Principal
from gateway.quotas.plans import violations_for
from gateway.settings import Settings

_KEY_ERRORS = {
    "invalid_key": ("INVALID_API_KEY", "Invalid API key"),
    "revoked": ("REVOKED_API_KEY", "API key has been revoked"),
    "expired": ("EXPIRED_API_KEY", "API key has expired"),
    "suspended": ("PROJECT_SUSPENDED", "Project is suspended"),
}
# the auth routes' codes (docs/auth.md, "Sessions on the data routes")
_SESSION_ERRORS = {
    "session_not_found": ("SESSION_NOT_FOUND", "Session not found or signed out"),
    "session_expired": ("SESSION_EXPIRED", "Session has expired"),
}


# the statement's row as an ``AdmissionRow`` without a Python call or a copy (a column a
# later migration appends is carried along, never read)
_as_row = tuple.__new__


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
        self.statement = AdmissionStatement(settings)
        # a probe that hasn't answered by then is presumed lost: the next request probes
        self.probe_timeout_s = self.statement.timeout_s + 2 * CANCEL_GRACE_S + 0.5
        self.local = LocalDenies(
            invalidation_live=lambda: self.invalidation_live(),
            probe_timeout_s=self.probe_timeout_s,
            clock=lambda: self.clock(),
        )
        # every admission waiting at one moment in one statement (off: one statement each)
        self.coalescer: Coalescer | None = (
            Coalescer(
                self.statement.send,
                timeout_s=self.statement.timeout_s,
                statements_max=settings.admission_statements_max,
            )
            if settings.admission_coalesce
            else None
        )
        # a refusal for the database size can lift at the next sample (Retry-After)
        self.db_size_sample_s = float(settings.db_size_sample_s)
        self._stats: dict[str, int] = {
            "local_denied": 0,
            "db_decisions": 0,
            "db_admitted": 0,
            "db_rate_limited": 0,
            "db_quota_exceeded": 0,
            "db_key_refused": 0,
            "db_session_refused": 0,
            "unavailable": 0,
        }

    # --- public -------------------------------------------------------------------------

    @property
    def prepare(self) -> bool:
        """Whether the statement is prepared on the server (not behind a transaction pooler)."""
        return self.statement.prepare

    def stats(self) -> dict[str, int]:
        coalesced = self.coalescer.stats() if self.coalescer is not None else {}
        return {**self._stats, "local_deny_entries": len(self.local), **coalesced}

    def forget_project(self, project_id: str) -> None:
        """Drop this project's local denies (its limits, status or keys changed)."""
        self.local.forget_project(project_id)

    def forget_all(self) -> None:
        """Drop every local deny (e.g. the invalidation channel reconnected)."""
        self.local.forget_all()

    def check_local(self, key: str | None, key_hash: str | None = None) -> str:
        """Raise the local 429 if this key's project is known to be over its limit.

        Costs no database round trip and no pool connection; returns the key's hash, to
        pass on to ``admit(..., key_hash=...)`` (routes call this before they acquire a
        connection). When a deny's one-second cap has passed but the database's reset
        hasn't, ONE request (the probe) goes to the database while the others keep
        being refused locally until its answer is in. ``key_hash``: the key's hash when
        the caller has it already (routing to a cell hashed the key).
        """
        if not key:
            raise GatewayError("INVALID_API_KEY", "Missing API key", status=401)
        if key_hash is None:
            key_hash = hash_key(key)
        if self.local.entries:
            error = self.local.refuse(key_hash, probe=True)
            if error is not None:
                self._stats["local_denied"] += 1
                raise error
        return key_hash

    def deny_early(self, key: str | None, key_hash: str | None = None) -> GatewayError | None:
        """The local 429 for ``key`` if its project is known to be over its limit, else
        ``None`` — with no side effects besides the count, so the HTTP front can ask
        before routing and body reading and leave everything else (a missing key, the
        probe when a re-check is due) to the pipeline's ``check_local``. ``key_hash``:
        the key's hash when the caller has it already."""
        if not key or not self.local.entries:
            return None
        error = self.local.refuse(key_hash or hash_key(key), probe=False)
        if error is not None:
            self._stats["local_denied"] += 1
        return error

    async def recheck(
        self, conn: AsyncConnection[Any], key_hash: str, session_hash: str | None
    ) -> None:
        """The key (and the session) checked again, nothing counted: an open realtime
        stream asks now and then. ``gateway.lookup_key``, the statement admission uses
        when its counters are off, so the key's and the session's rules and refusals
        (``INVALID_API_KEY`` … ``SESSION_EXPIRED``) are admission's own."""
        self._key_only(await self.statement.lookup(conn, key_hash, session_hash))

    async def admit(
        self,
        conn: AsyncConnection[Any],
        key: str | None,
        cost: int = 1,
        *,
        key_hash: str | None = None,
        session_hash: str | None = None,
        grows: bool = False,
    ) -> Admission:
        """Decide a request of ``cost`` units (a batch of N queries costs N).

        ``key_hash``: the caller already ran ``check_local`` for this request.
        ``session_hash``: the SHA-256 of the request's session token; the session is
        resolved in the same statement (never cached here) and its user id lands in
        ``Admission.principal.user_id``.
        ``grows``: the request inserts or updates (refused while the project is over its
        database size; see gateway/quotas).
        """
        if key_hash is None:
            key_hash = self.check_local(key)
        if cost < 1:
            raise ValueError("cost must be at least 1")
        if not conn.autocommit:
            # the counter write must commit on its own (and its synchronous_commit=off must not
            # leak into a caller's transaction)
            raise RuntimeError("admission needs an autocommit connection")
        # arrival, not the statement's sending: a local deny measured from here ends a
        # little earlier, never later, than the database's own reset
        sent_at = self.clock()
        try:
            if not self.enabled:  # the key (and session) only: no counters, no local deny
                row = await self.statement.lookup(conn, key_hash, session_hash)
            elif self.coalescer is not None:
                row = await self.coalescer.admit(conn, (key_hash, cost, grows, session_hash))
            else:
                row = await self.statement.admit(conn, key_hash, cost, grows, session_hash)
        except BaseException as error:
            self._unanswered(error, key_hash)
            raise
        if not self.enabled:
            return self._key_only(row)
        return self._decide(row, key_hash, sent_at, cost=cost, grows=grows)

    def answer(self, answer: Any, key_hash: str, sent_at: float, *, cost: int, grows: bool) -> Any:
        """A passenger's answer (gateway/admission/coalescer.py: the admission of a
        request that waited for its project's share of the pool) decided as ``admit``
        decides its own: the ``Admission``, or the exception that refuses the request."""
        if isinstance(answer, BaseException):
            self._unanswered(answer, key_hash)
            return answer
        try:
            return self._decide(answer, key_hash, sent_at, cost=cost, grows=grows)
        except GatewayError as error:
            return error

    def _unanswered(self, error: BaseException, key_hash: str) -> None:
        """The statement gave this request no row (timeout, lost database, cancel)."""
        if isinstance(error, GatewayError) and error.status == 503:
            # counted once per request (one coalesced statement answers many)
            self._stats["unavailable"] += 1
        self.local.probe_failed(key_hash)  # the next request probes again

    # --- decisions ----------------------------------------------------------------------

    def _key_only(self, raw: tuple[Any, ...]) -> Admission:
        row: AdmissionRow = _as_row(AdmissionRow, raw)
        outcome = row.outcome
        if outcome in _SESSION_ERRORS:
            self._stats["db_session_refused"] += 1
            code, message = _SESSION_ERRORS[outcome]
            # the key was recognised: still the project's request for the request log
            raise GatewayError(
                code, message, status=401, project_id=str(row.project_id), key_id=str(row.key_id)
            )
        if outcome != "admitted":
            self._stats["db_key_refused"] += 1
            code, message = _KEY_ERRORS[outcome]
            raise GatewayError(code, message)
        return Admission(
            project_id=str(row.project_id),
            schema_name=row.schema_name,
            key_id=str(row.key_id),
            principal=_principal(row.key_type, row.scopes, row.user_id),
        )

    def _decide(
        self,
        raw: tuple[Any, ...],
        key_hash: str,
        sent_at: float,
        *,
        cost: int = 1,
        grows: bool = False,
    ) -> Admission:
        row: AdmissionRow = _as_row(AdmissionRow, raw)
        outcome = row.outcome
        remaining = row.rate_remaining
        quota_used, quota_limit = row.quota_used, row.quota_limit
        self._stats["db_decisions"] += 1
        violations: list[dict[str, Any]] = []
        requests_full = bandwidth_over = False
        if outcome == "quota_exceeded":
            violations = violations_for(
                cost=cost,
                grows=grows,
                requests=(quota_used, quota_limit),
                bandwidth=(row.bandwidth_used, row.bandwidth_limit),
                database=(row.db_size_used, row.db_size_limit),
            )
            requests_full = quota_limit is not None and quota_used >= quota_limit
            bandwidth_over = row.bandwidth_limit is not None and (
                row.bandwidth_used >= row.bandwidth_limit
            )
        full = (outcome == "rate_limited" and remaining == 0) or requests_full or bandwidth_over
        if not full:
            # the database answered something else than "full": no local deny for this key
            self.local.discard(key_hash)
        if outcome in _KEY_ERRORS:
            self._stats["db_key_refused"] += 1
            code, message = _KEY_ERRORS[outcome]
            raise GatewayError(code, message)
        project_id = str(row.project_id)
        key_id = str(row.key_id)
        rate_limit, window_s, reset_in = row.rate_limit, row.window_s, row.reset_in
        reset_epoch = math.ceil(row.reset_at)
        t = seconds_up(reset_in)
        if outcome == "admitted":
            self._stats["db_admitted"] += 1
            return Admission(
                project_id=project_id,
                schema_name=row.schema_name,
                key_id=key_id,
                principal=_principal(row.key_type, row.scopes, row.user_id),
                rate_limit=rate_limit,
                rate_remaining=remaining,
                rate_reset_epoch=reset_epoch,
                rate_reset_in=t,
                window_s=window_s,
                quota_used=quota_used,
                quota_limit=quota_limit,
            )
        if outcome in _SESSION_ERRORS:
            # admitted (and counted), then refused for its session: the project's request
            self._stats["db_session_refused"] += 1
            code, message = _SESSION_ERRORS[outcome]
            headers = rate_limit_headers(rate_limit, remaining, reset_epoch, t, window_s)
            raise GatewayError(
                code, message, status=401, headers=headers, project_id=project_id, key_id=key_id
            )
        if outcome == "rate_limited":
            self._stats["db_rate_limited"] += 1
            if remaining == 0:
                # not even one request fits until reset_in: deny locally until then.
                # Measured from when the call was SENT, so the local deny always ends at or
                # before the database's own reset (never denies what the database would admit).
                self.local.remember(
                    key_hash,
                    LocalDeny(
                        project_id=project_id,
                        key_id=key_id,
                        check_until=sent_at + reset_in,
                        reset_mono=sent_at + reset_in,
                        limit=rate_limit,
                        remaining=0,
                        rate_reset_mono=sent_at + reset_in,
                        rate_reset_epoch=reset_epoch,
                        window_s=window_s,
                    ),
                )
            raise rate_limited_error(
                rate_limit,
                reset_epoch,
                t,
                window_s,
                remaining,
                project_id=project_id,
                key_id=key_id,
                admission="rate_limited",
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
                "requests": row.day_reset_in,
                "bandwidth": row.month_reset_in,
                "database": self.db_size_sample_s,
            }
            retry = max(seconds_up(lifts.get(v["type"], 1.0)) for v in violations)
            if full:
                # daily requests used up / the month's bandwidth spent: usage only grows
                # until its reset (limits changes notify), so refuse locally until the
                # first of those resets; the database quota depends on the operation and
                # on the next sample, so a local answer never lists it
                local = [v for v in violations if v["type"] != "database"]
                until = min(
                    row.day_reset_in if requests_full else math.inf,
                    row.month_reset_in if bandwidth_over else math.inf,
                )
                self.local.remember(
                    key_hash,
                    LocalDeny(
                        project_id=project_id,
                        key_id=key_id,
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
            raise QuotaExceeded(
                violations,
                headers,
                project_id=project_id,
                key_id=key_id,
                admission="quota_exceeded",
            )
        raise RuntimeError(f"unknown admission outcome {outcome!r}")


def _principal(key_type: Any, scopes: Any, user_id: Any) -> Principal:
    return Principal(
        key_type, frozenset(scopes or ()), str(user_id) if user_id is not None else None
    )
