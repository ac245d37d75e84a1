"""Local denies: this instance's memory of projects the database said are over their limit.

Once ``gateway.admit`` answered that a key's project has no room even for one request
(rate limit: until the window's reset; daily quota: until UTC midnight; bandwidth:
until the next UTC month), the instance
answers that key's requests 429 itself until then — no pool connection, no round trip.
It never admits anything locally, so the limit stays exact across instances.

Kept apart from the ``Admitter`` (which fills it from the database's answers) so that
the HTTP front (``gateway/http/front.py``) can refuse such a request before routing,
middleware and body reading, with exactly the answer the pipeline would give. Pure: no
database, no Starlette.

- ``refuse(key_hash, probe=...)`` is the decision. With ``probe=True`` (the pipeline's
  ``check_local``) a deny whose re-check is due lets ONE request through to ask the
  database for everyone (the probe); with ``probe=False`` (the front) nothing changes:
  a request that is not refused goes on to the pipeline, which makes the probe decision.
- A deny is re-checked with the database at least once a second while no invalidation
  channel is live (``UNVERIFIED_DENY_CAP_S``), and dropped by ``forget_project`` on
  NOTIFY of a project's limits, status or keys.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.admission.decision import QuotaExceeded
from gateway.admission.headers import rate_limit_headers
from gateway.errors import GatewayError

# While no invalidation channel (LISTEN/NOTIFY) is live, a local deny is re-checked with
# the database at least this often, so a raised limit or a new key takes effect quickly.
UNVERIFIED_DENY_CAP_S = 1.0
LOCAL_DENY_MAX_ENTRIES = 100_000


@dataclass(slots=True)
class LocalDeny:
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
    # the last rate-limit answer given without side effects, and its Retry-After second:
    # the same answer serves every request of that second (the HTTP front never raises it)
    shared: tuple[int, GatewayError] | None = None


def seconds_up(value: float) -> int:
    """Whole seconds, rounded up, at least 1 (Retry-After and ``t``)."""
    return max(1, math.ceil(value - 1e-9))


def rate_limited_error(
    limit: int,
    reset_epoch: int,
    t: int,
    window_s: int,
    remaining: int = 0,
    *,
    project_id: str,
    key_id: str,
    admission: str,
) -> GatewayError:
    """The contract's 429 ``RATE_LIMIT_EXCEEDED`` with the rate-limit headers; it names
    its project and key (the request log) and how it was decided (the metrics)."""
    headers = rate_limit_headers(limit, remaining, reset_epoch, t, window_s)
    headers["Retry-After"] = str(t)
    return GatewayError(
        "RATE_LIMIT_EXCEEDED",
        f"Rate limit exceeded: {limit} requests per {window_s} seconds",
        status=429,
        details={"limit": limit, "windowSeconds": window_s, "retryAfter": t},
        headers=headers,
        project_id=project_id,
        key_id=key_id,
        admission=admission,
    )


class LocalDenies:
    """The instance's local denies, by key hash (and the keys denied per project)."""

    def __init__(
        self,
        *,
        invalidation_live: Callable[[], bool],
        probe_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.invalidation_live = invalidation_live
        # a probe that hasn't answered by then is presumed lost: the next request probes
        self.probe_timeout_s = probe_timeout_s
        self.clock = clock
        self.entries: dict[str, LocalDeny] = {}
        self._keys_by_project: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def refuse(self, key_hash: str, *, probe: bool) -> GatewayError | None:
        """The local answer (429, ``admission="local_deny"``) if this key is denied now.

        ``probe=True``: when the deny's re-check is due, this request becomes the probe
        (it goes to the database for everyone) and ``None`` is returned; a deny past its
        reset is dropped. ``probe=False``: no side effects; ``None`` leaves the decision
        to a later ``refuse(..., probe=True)``, and a rate-limit answer is one shared
        object per second (read it, never raise it: a raised exception keeps its
        traceback).
        """
        deny = self.entries.get(key_hash)
        if deny is None:
            return None
        now = self.clock()
        if now < deny.reset_mono and (
            now < deny.check_until
            or (deny.probe_at is not None and now - deny.probe_at < self.probe_timeout_s)
        ):
            if probe or deny.violations is not None:
                return self.answer(deny, now)
            # without side effects (the front): one answer object per Retry-After second
            t = seconds_up(deny.reset_mono - now)
            shared = deny.shared
            if shared is None or shared[0] != t:
                shared = deny.shared = (t, self.answer(deny, now))
            return shared[1]
        if probe:
            if now < deny.reset_mono:
                deny.probe_at = now  # this request asks the database for everyone
            else:
                self.drop(key_hash, deny)  # the window has reset
        return None

    def probe_failed(self, key_hash: str) -> None:
        """The probe's database call failed: the next request probes again."""
        deny = self.entries.get(key_hash)
        if deny is not None:
            deny.probe_at = None

    def discard(self, key_hash: str) -> None:
        """The database answered something else than "full" for this key."""
        deny = self.entries.get(key_hash)
        if deny is not None:
            self.drop(key_hash, deny)

    def answer(self, deny: LocalDeny, now: float) -> GatewayError:
        """The local 429 (``admission="local_deny"``), as the database would answer."""
        if deny.violations is None:
            return rate_limited_error(
                deny.limit,
                deny.rate_reset_epoch,
                seconds_up(deny.reset_mono - now),
                deny.window_s,
                project_id=deny.project_id,
                key_id=deny.key_id,
                admission="local_deny",
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
        t = seconds_up(reset_mono - now)
        headers = rate_limit_headers(deny.limit, remaining, reset_epoch, t, deny.window_s)
        headers["Retry-After"] = str(max(t, seconds_up(deny.reset_mono - now)))
        return QuotaExceeded(
            deny.violations,
            headers,
            project_id=deny.project_id,
            key_id=deny.key_id,
            admission="local_deny",
        )

    def remember(self, key_hash: str, deny: LocalDeny) -> None:
        now = self.clock()
        if not self.invalidation_live():
            deny.check_until = min(deny.check_until, now + UNVERIFIED_DENY_CAP_S)
        if deny.check_until <= now:
            return
        if len(self.entries) >= LOCAL_DENY_MAX_ENTRIES:
            self._prune(now)
            if len(self.entries) >= LOCAL_DENY_MAX_ENTRIES:
                return  # still full of live denies: just ask the database
        old = self.entries.get(key_hash)
        if old is not None and old.project_id != deny.project_id:
            self.drop(key_hash, old)
        self.entries[key_hash] = deny
        self._keys_by_project.setdefault(deny.project_id, set()).add(key_hash)

    def drop(self, key_hash: str, deny: LocalDeny) -> None:
        self.entries.pop(key_hash, None)
        keys = self._keys_by_project.get(deny.project_id)
        if keys is not None:
            keys.discard(key_hash)
            if not keys:
                del self._keys_by_project[deny.project_id]

    def forget_project(self, project_id: str) -> None:
        for key_hash in self._keys_by_project.pop(str(project_id), ()):
            self.entries.pop(key_hash, None)

    def forget_all(self) -> None:
        self.entries.clear()
        self._keys_by_project.clear()

    def _prune(self, now: float) -> None:
        for key_hash, deny in list(self.entries.items()):
            if deny.check_until <= now:
                self.drop(key_hash, deny)
