"""What admission answers: the statement's row read by name, an admitted request, or the
quota error that carries ``violations``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.errors import GatewayError
from gateway.metadata.catalog import Principal
from gateway.quotas.plans import HINT, quota_code, quota_message


class AdmissionRow(NamedTuple):
    """One row of the ``gateway.admission`` composite type (``gateway.admit``,
    ``gateway.admit_many`` and ``gateway.lookup_key`` all return it), in its column order.

    A NamedTuple because the statement's row already is a tuple: ``tuple.__new__``
    wraps it without a copy or a Python call (``admitter.py``), and every reader names
    the column it means."""

    outcome: str  # admitted, rate_limited, quota_exceeded, invalid_key, revoked, ...
    project_id: Any
    schema_name: str
    key_id: Any
    key_type: str
    scopes: Any
    rate_limit: int
    rate_used: int
    rate_remaining: int
    reset_at: float  # epoch seconds, database clock
    reset_in: float
    window_s: int
    quota_used: int | None
    quota_limit: int | None
    day_reset_in: float
    user_id: Any  # the session's user (0009)
    # quotas (0010)
    bandwidth_used: int | None
    bandwidth_limit: int | None
    db_size_used: int | None
    db_size_limit: int | None
    month_reset_in: float


@dataclass(slots=True)
class Admission:
    """An admitted request: who is asking and the rate-limit numbers for the headers.

    Not ``frozen``: a frozen dataclass builds through ``object.__setattr__`` per field,
    1.34 us against 0.36 us here, on every admitted request; nothing assigns to one after
    admission builds it (treat it as read-only)."""

    project_id: str
    schema_name: str  # the project's schema and the role its queries run as
    key_id: str
    principal: Principal
    rate_limit: int | None = None  # None when admission counters are disabled (bench)
    rate_remaining: int = 0
    rate_reset_epoch: int = 0  # X-RateLimit-Reset: epoch seconds, database clock
    rate_reset_in: int = 0  # whole seconds to the reset (≥ 1)
    window_s: int = 60
    quota_used: int | None = None
    quota_limit: int | None = None

    @property
    def key_type(self) -> str:
        return self.principal.key_type


class QuotaExceeded(GatewayError):
    """429 for every quota the request is over: ``REQUEST_QUOTA_EXCEEDED``,
    ``DATABASE_QUOTA_EXCEEDED``, ``BANDWIDTH_QUOTA_EXCEEDED``, or
    ``MULTIPLE_QUOTAS_EXCEEDED`` when several are; ``violations`` (the original's
    ``[{type, used, limit, percentUsed}]``) in ``details`` and at the top level."""

    def __init__(
        self,
        violations: list[dict[str, Any]],
        headers: dict[str, str],
        *,
        project_id: str | None = None,
        key_id: str | None = None,
        admission: str | None = None,
    ) -> None:
        super().__init__(
            quota_code(violations),
            quota_message(violations),
            status=429,
            details={"violations": violations},
            hint=HINT,
            headers=headers,
            project_id=project_id,
            key_id=key_id,
            admission=admission,
        )
        self.violations = violations

    def to_error(self) -> dict[str, Any]:
        error = super().to_error()
        error["violations"] = self.violations
        return error
