"""Plans and quota rules, the pure part: limit values, which requests grow the database,
and the ``violations`` of a 429 in the original's shape.

No database here (``gateway/quotas/store.py`` is the database part), so the rules can be
tested and reused (CLI, admission, usage) without a connection.
"""

from __future__ import annotations

import re
from typing import Any

UNLIMITED = -1

# The plan's columns, in the order `gateway plan list` shows them.
PLAN_FIELDS: tuple[str, ...] = (
    "rate_limit_per_minute",
    "requests_per_day",
    "bandwidth_bytes_monthly",
    "db_size_bytes",
    "job_runs_monthly",
    "realtime_streams",
    "job_timeout_ms_max",
)

# The project's override column for each plan field (the first two existed before plans).
OVERRIDE_COLUMNS: dict[str, str] = {
    "rate_limit_per_minute": "rate_limit_per_minute",
    "requests_per_day": "requests_limit_daily",
    "bandwidth_bytes_monthly": "bandwidth_limit_monthly",
    "db_size_bytes": "db_size_limit_bytes",
    "job_runs_monthly": "job_runs_limit_monthly",
    "realtime_streams": "realtime_streams_limit",
    "job_timeout_ms_max": "job_timeout_ms_limit",
}

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
_INT32_FIELDS = frozenset({"rate_limit_per_minute", "realtime_streams", "job_timeout_ms_max"})
_BYTE_FIELDS = frozenset({"bandwidth_bytes_monthly", "db_size_bytes"})
# a rate limit is always a number: "unlimited" would make the rate-limit headers meaningless
# nor a job's timeout: a hanging endpoint would hold a delivery slot for ever
_NO_UNLIMITED = frozenset({"rate_limit_per_minute", "job_timeout_ms_max"})
# bounds of the fields that have them (the database checks the same)
_RANGES = {"job_timeout_ms_max": (1_000, 1_800_000)}

_SUFFIXES = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_NUMBER_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?B)?$", re.IGNORECASE)

PLAN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

INHERIT = "plan"  # `set-limits --db-size-bytes plan` clears the override


class LimitError(ValueError):
    """A limit value we refuse; one line for the person at the terminal."""


def parse_limit(raw: str, field: str, *, allow_inherit: bool = False) -> int | None:
    """A limit from the command line: a number (byte fields take KB/MB/GB/TB, 1024-based),
    ``unlimited`` or ``-1`` (-1 is stored), or — for a project override — ``plan`` (None:
    inherit the plan's value)."""
    text = raw.strip()
    lowered = text.lower()
    if allow_inherit and lowered in (INHERIT, "inherit", "default"):
        return None
    if lowered in ("unlimited", "-1"):
        if field in _NO_UNLIMITED:
            raise LimitError(f"{_flag(field)} can't be unlimited (give a number)")
        return UNLIMITED
    match = _NUMBER_RE.match(text)
    if match is None or (match.group(2) and field not in _BYTE_FIELDS):
        units = " (or with KB, MB, GB, TB)" if field in _BYTE_FIELDS else ""
        inherit = ", or plan" if allow_inherit else ""
        raise LimitError(
            f"{_flag(field)} {raw!r} is not a whole number >= 0{units}, unlimited{inherit}"
        )
    value = float(match.group(1)) * _SUFFIXES[(match.group(2) or "").upper()]
    if value != int(value):
        raise LimitError(f"{_flag(field)} {raw!r} is not a whole number of bytes")
    number = int(value)
    low, maximum = _RANGES.get(field, (0, INT32_MAX if field in _INT32_FIELDS else INT64_MAX // 4))
    if number > maximum:
        raise LimitError(f"{_flag(field)} must be at most {maximum}")
    if number < low:
        raise LimitError(f"{_flag(field)} must be at least {low}")
    return number


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def effective(plan_value: int, override: int | None) -> int | None:
    """The limit a project gets: its override, else the plan's; None = unlimited."""
    value = plan_value if override is None else override
    return None if value == UNLIMITED else value


# --- which requests grow the database ---------------------------------------------------

GROWING_OPERATIONS = frozenset({"insert", "update"})


def request_grows(parsed: Any, *, batch: bool) -> bool:
    """Whether a request body may grow the project's database (an insert or an update —
    an update writes new row versions). Deletes and selects don't, so an app over its
    database size can still read and free space. A body we can't read grows nothing (it
    is refused with a 400 after admission anyway)."""
    if not isinstance(parsed, dict):
        return False
    if batch:
        queries = parsed.get("queries")
        if not isinstance(queries, list):
            return False
        return any(_grows(q) for q in queries)
    return _grows(parsed.get("query"))


def _grows(query: Any) -> bool:
    if not isinstance(query, dict):
        return False
    operation = query.get("operation")
    return isinstance(operation, str) and operation.lower() in GROWING_OPERATIONS


# --- violations ---------------------------------------------------------------------------

QUOTA_CODES: dict[str, str] = {
    "requests": "REQUEST_QUOTA_EXCEEDED",
    "database": "DATABASE_QUOTA_EXCEEDED",
    "bandwidth": "BANDWIDTH_QUOTA_EXCEEDED",
}
MULTIPLE_CODE = "MULTIPLE_QUOTAS_EXCEEDED"
# the original checked (and listed) them in this order
VIOLATION_ORDER: tuple[str, ...] = ("database", "requests", "bandwidth")
HINT = "Upgrade your plan or wait for the quota to reset"


def percent(used: int | None, limit: int | None) -> float | None:
    """Percentage used, two decimals; None for an unlimited quota (100 for a zero limit)."""
    if limit is None:
        return None
    if limit <= 0:
        return 100.0
    return round(100.0 * (used or 0) / limit, 2)


def violation(kind: str, used: int, limit: int) -> dict[str, Any]:
    """``{type, used, limit, percentUsed}`` — the original's violation object."""
    return {"type": kind, "used": used, "limit": limit, "percentUsed": percent(used, limit)}


def violations_for(
    *,
    cost: int,
    grows: bool,
    requests: tuple[int, int | None],
    bandwidth: tuple[int | None, int | None],
    database: tuple[int | None, int | None],
) -> list[dict[str, Any]]:
    """Every quota a refused request is over, in the original's order.

    ``requests`` is (day's usage, daily limit): over when this request's ``cost`` doesn't
    fit. ``bandwidth`` is (month's bytes, limit): over when used >= limit. ``database``
    (sampled size, limit) counts only for a request that ``grows`` the database. The same
    rules as the ``gateway.admit`` statement that made the decision."""
    found: dict[str, dict[str, Any]] = {}
    db_used, db_limit = database
    if grows and db_limit is not None and (db_used or 0) >= db_limit:
        found["database"] = violation("database", db_used or 0, db_limit)
    used, limit = requests
    if limit is not None and used + cost > limit:
        found["requests"] = violation("requests", used, limit)
    bw_used, bw_limit = bandwidth
    if bw_limit is not None and (bw_used or 0) >= bw_limit:
        found["bandwidth"] = violation("bandwidth", bw_used or 0, bw_limit)
    return [found[k] for k in VIOLATION_ORDER if k in found]


def quota_code(violations: list[dict[str, Any]]) -> str:
    if len(violations) > 1:
        return MULTIPLE_CODE
    return QUOTA_CODES.get(violations[0]["type"], "QUOTA_EXCEEDED")


def quota_message(violations: list[dict[str, Any]]) -> str:
    if len(violations) > 1:
        kinds = ", ".join(v["type"] for v in violations)
        return f"{len(violations)} quotas exceeded ({kinds})"
    v = violations[0]
    if v["type"] == "requests":
        return f"Daily request quota exceeded ({v['used']} of {v['limit']} requests used)"
    if v["type"] == "bandwidth":
        return (
            f"Monthly bandwidth quota exceeded ({v['used']} of {v['limit']} bytes sent this month)"
        )
    if v["type"] == "database":
        return (
            f"Database size quota exceeded ({v['used']} of {v['limit']} bytes): inserts and "
            "updates are refused; selects and deletes still work"
        )
    return f"{v['type']} quota exceeded"
