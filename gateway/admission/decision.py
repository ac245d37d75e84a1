"""What admission answers: an admitted request, or the quota error that carries ``violations``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError
from gateway.metadata.catalog import Principal
from gateway.quotas.plans import HINT, quota_code, quota_message


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request: who is asking and the rate-limit numbers for the headers."""

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

    def __init__(self, violations: list[dict[str, Any]], headers: dict[str, str]) -> None:
        super().__init__(
            quota_code(violations),
            quota_message(violations),
            status=429,
            details={"violations": violations},
            hint=HINT,
            headers=headers,
        )
        self.violations = violations

    def to_error(self) -> dict[str, Any]:
        error = super().to_error()
        error["violations"] = self.violations
        return error
