"""The rate-limit headers (``X-RateLimit-*`` and the IETF ``RateLimit`` pair) of an answer."""

from __future__ import annotations

from gateway.admission.decision import Admission


def rate_limit_headers(
    limit: int, remaining: int, reset_epoch: int, reset_in: int, window_s: int
) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset_epoch),
        "RateLimit-Policy": f'"minute";q={limit};w={window_s}',
        "RateLimit": f'"minute";r={remaining};t={reset_in}',
    }


def admission_headers(admission: Admission) -> dict[str, str]:
    """The headers every response after admission carries (none with counters disabled)."""
    if admission.rate_limit is None:
        return {}
    return rate_limit_headers(
        admission.rate_limit,
        admission.rate_remaining,
        admission.rate_reset_epoch,
        admission.rate_reset_in,
        admission.window_s,
    )
