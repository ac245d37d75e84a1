"""The jobs API's rules, with no I/O: body validation, delays, cron, backoff, plans.

Everything a request can get wrong is decided here and raised as a ``JobsError`` with
the original's code, so the routes never answer 500 for bad input and the database
never sees a value that doesn't fit.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import CroniterBadDateError, croniter

from gateway.errors import GatewayError

NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+$")
NAME_MAX = 100
RESERVED_PREFIX = "sys:"
PAYLOAD_MAX_BYTES = 256 * 1024
DELAY_RE = re.compile(r"^(\d{1,9})(ms|s|m|h|d)$")
DELAY_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DELAY_MAX_MS = 7 * 86_400_000
TIMEOUT_DEFAULT_MS = 180_000
TIMEOUT_MAX_MS = 30 * 60_000
ATTEMPTS_DEFAULT = 3
ATTEMPTS_MAX = 100
KEY_MAX = 255
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 3600.0
RESULT_MAX_BYTES = 8 * 1024
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
OFFSET_MAX = 100_000
STATUSES = ("pending", "active", "completed", "failed", "delayed", "cancelled")
ORDER_BY = {"createdAt": "created_at", "runAt": "run_at", "finishedAt": "finished_at"}
SCHEDULE_NAME_MAX = 100
DESCRIPTION_MAX = 1000
# a cron expression must fire within this many years of now (``0 0 30 2 *`` never does)
CRON_HORIZON_YEARS = 5


ENQUEUE_FIELDS = frozenset(
    {
        "name",
        "payload",
        "delay",
        "runAt",
        "timeoutMs",
        "maxAttempts",
        "concurrencyKey",
        "idempotencyKey",
    }
)
SCHEDULE_FIELDS = frozenset({"name", "cron", "payload", "timezone", "active", "description"})


class JobsError(GatewayError):
    """A refusal in the jobs API's envelope (``{"ok": false, "error": {code, message}}``)."""


def invalid(code: str, message: str, status: int = 400) -> JobsError:
    return JobsError(code, message, status=status)


@dataclass(frozen=True)
class EnqueueRequest:
    name: str
    payload: Any
    run_at: dt.datetime | None  # None: now (database clock)
    delay_ms: int
    timeout_ms: int | None  # None: the default, capped at the plan's job_timeout_ms_max
    max_attempts: int
    concurrency_key: str | None
    idempotency_key: str | None


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise invalid("VALIDATION_ERROR", "the request body must be a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid("VALIDATION_ERROR", "the request body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise invalid("VALIDATION_ERROR", "the request body must be a JSON object")
    return parsed


def require_name(value: Any) -> str:
    """The original's order: a missing or empty name is a ``VALIDATION_ERROR`` before any
    of the name rules (``INVALID_JOB_NAME``) are looked at."""
    if value is None or value == "":
        raise invalid("VALIDATION_ERROR", "name is required")
    return check_name(value)


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise invalid("INVALID_JOB_NAME", "name is required and must be a string")
    if len(value) > NAME_MAX:
        raise invalid("INVALID_JOB_NAME", f"name is longer than {NAME_MAX} characters")
    if value.startswith(RESERVED_PREFIX):
        raise invalid("INVALID_JOB_NAME", "names starting with 'sys:' are reserved")
    if not NAME_RE.match(value):
        raise invalid("INVALID_JOB_NAME", "name may contain only letters, digits, '.', '_', '-'")
    return value


def check_payload(value: Any, *, required: bool = True) -> Any:
    """A job's payload is a JSON object or array, as in the original (null, a string or a
    number is ``INVALID_PAYLOAD``; a schedule may leave it out: ``required=False``). jsonb
    can't hold NUL in a string or a key, so one is refused here rather than by PostgreSQL."""
    if value is None and not required:
        return None
    if not isinstance(value, dict | list):
        raise invalid("INVALID_PAYLOAD", "payload must be a JSON object or array")
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        raise invalid("INVALID_PAYLOAD", "payload must be JSON") from None
    if len(encoded) > PAYLOAD_MAX_BYTES:
        raise invalid("INVALID_PAYLOAD", "payload is larger than 256 KB")
    if b"\\u0000" in encoded:
        raise invalid("INVALID_PAYLOAD", "payload must not contain NUL characters")
    return value


def check_text(value: str, field: str) -> str:
    """PostgreSQL text can't hold NUL: a stored string carrying one is the caller's error,
    named, never a database error."""
    if "\x00" in value:
        raise invalid("VALIDATION_ERROR", f"{field} must not contain NUL characters")
    return value


def parse_delay(value: Any) -> int:
    """``"30s" "15m" "1h" "1d"`` (also ``ms``) or a number of milliseconds → milliseconds."""
    if isinstance(value, bool):
        raise invalid("INVALID_DELAY", "delay must look like '30s', '15m', '1h' or '1d'")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise invalid("INVALID_DELAY", "delay must be a non-negative duration")
        ms = int(value)
    elif isinstance(value, str):
        match = DELAY_RE.match(value.strip())
        if not match:
            raise invalid("INVALID_DELAY", "delay must look like '30s', '15m', '1h' or '1d'")
        ms = int(match.group(1)) * DELAY_UNITS_MS[match.group(2)]
    else:
        raise invalid("INVALID_DELAY", "delay must look like '30s', '15m', '1h' or '1d'")
    if ms > DELAY_MAX_MS:
        raise invalid("DELAY_TOO_LONG", "delay is longer than 7 days")
    return ms


def parse_instant(value: Any, field: str, code: str = "VALIDATION_ERROR") -> dt.datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise invalid(code, f"{field} must be an ISO 8601 date-time")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise invalid(code, f"{field} must be an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:  # 0001-01-01T00:00+01:00 is before year 1 in UTC: Python can't hold it
        in_utc = parsed.astimezone(dt.UTC)
    except OverflowError:
        raise invalid(code, f"{field} is outside the years 1 to 9999 (UTC)") from None
    return in_utc


def _optional_key(raw: dict[str, Any], field: str) -> str | None:
    value = raw.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > KEY_MAX:
        raise invalid("VALIDATION_ERROR", f"{field} must be a string of 1 to {KEY_MAX} characters")
    return check_text(value, field)


def _bounded_int(raw: dict[str, Any], field: str, default: int, low: int, high: int) -> int:
    value = raw.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid("VALIDATION_ERROR", f"{field} must be an integer from {low} to {high}")
    return value


def parse_enqueue(body: bytes, now: dt.datetime | None = None) -> EnqueueRequest:
    raw = parse_json_object(body)
    unknown = sorted(set(raw) - ENQUEUE_FIELDS)
    if unknown:
        raise invalid("VALIDATION_ERROR", f"unknown field: {unknown[0]}")
    name = require_name(raw.get("name"))
    payload = check_payload(raw.get("payload"))
    delay_ms = 0
    run_at: dt.datetime | None = None
    if raw.get("delay") is not None and raw.get("runAt") is not None:
        raise invalid("VALIDATION_ERROR", "give delay or runAt, not both")
    if raw.get("delay") is not None:
        delay_ms = parse_delay(raw["delay"])
    if raw.get("runAt") is not None:
        run_at = parse_instant(raw["runAt"], "runAt", "INVALID_DELAY")
        now = now or dt.datetime.now(dt.UTC)
        if run_at - now > dt.timedelta(milliseconds=DELAY_MAX_MS):
            raise invalid("DELAY_TOO_LONG", "runAt is more than 7 days away")
    # the plan's smaller bound is checked by gateway.enqueue_job (store.enqueue)
    timeout_ms = None
    if raw.get("timeoutMs") is not None:
        timeout_ms = _bounded_int(raw, "timeoutMs", TIMEOUT_DEFAULT_MS, 1000, TIMEOUT_MAX_MS)
    max_attempts = _bounded_int(raw, "maxAttempts", ATTEMPTS_DEFAULT, 1, ATTEMPTS_MAX)
    return EnqueueRequest(
        name=name,
        payload=payload,
        run_at=run_at,
        delay_ms=delay_ms,
        timeout_ms=timeout_ms,
        max_attempts=max_attempts,
        concurrency_key=_optional_key(raw, "concurrencyKey"),
        idempotency_key=_optional_key(raw, "idempotencyKey"),
    )


# --- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    name: str | None
    status: str | None  # None: all
    limit: int
    offset: int
    order_by: str  # a column name from ORDER_BY, never input
    descending: bool


def _int_param(value: str | None, default: int, code: str, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    # isascii: superscripts and Arabic-Indic digits are digits to str.isdigit, not to int()
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise invalid(code, f"must be an integer from {low} to {high}")
    return int(value)


def parse_list(params: dict[str, str]) -> ListQuery:
    name = params.get("name") or None
    if name is not None:
        check_name(name)
    status = params.get("status") or None
    if status == "all":
        status = None
    if status is not None and status not in STATUSES:
        raise invalid("VALIDATION_ERROR", f"status must be one of: {', '.join(STATUSES)}, all")
    limit = _int_param(params.get("limit"), LIST_LIMIT_DEFAULT, "INVALID_LIMIT", 1, LIST_LIMIT_MAX)
    offset = _int_param(params.get("offset"), 0, "INVALID_OFFSET", 0, OFFSET_MAX)
    order_by = params.get("orderBy") or "createdAt"
    if order_by not in ORDER_BY:
        raise invalid("VALIDATION_ERROR", f"orderBy must be one of: {', '.join(ORDER_BY)}")
    direction = (params.get("orderDir") or "desc").lower()
    if direction not in ("asc", "desc"):
        raise invalid("VALIDATION_ERROR", "orderDir must be asc or desc")
    return ListQuery(name, status, limit, offset, ORDER_BY[order_by], direction == "desc")


# --- cron ---------------------------------------------------------------------------------


def check_cron(expression: Any) -> str:
    """5 fields, or 6 with seconds FIRST (as the original accepts); else ``INVALID_CRON``."""
    if not isinstance(expression, str) or not expression.strip() or len(expression) > 200:
        raise invalid("INVALID_CRON", "cron must be a cron expression of 5 or 6 fields")
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise invalid("INVALID_CRON", "cron must have 5 fields, or 6 with seconds first")
    normalized = " ".join(fields)
    try:
        ok = croniter.is_valid(normalized, second_at_beginning=len(fields) == 6)
    except Exception:
        ok = False
    if not ok:
        raise invalid("INVALID_CRON", f"{expression!r} is not a valid cron expression")
    try:  # valid syntax that never fires (Feb 30, Apr 31): no next run to store
        croniter(
            normalized,
            dt.datetime.now(dt.UTC),
            second_at_beginning=len(fields) == 6,
            max_years_between_matches=CRON_HORIZON_YEARS,
        ).get_next(dt.datetime)
    except (CroniterBadDateError, ValueError, OverflowError):
        raise invalid(
            "INVALID_CRON", f"{expression!r} never fires in the next {CRON_HORIZON_YEARS} years"
        ) from None
    return normalized


def check_timezone(value: Any) -> str:
    if value is None:
        return "UTC"
    if not isinstance(value, str) or not value or len(value) > 64 or ".." in value:
        raise invalid("VALIDATION_ERROR", "timezone must be an IANA time zone name")
    check_text(value, "timezone")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid("VALIDATION_ERROR", f"unknown time zone {value!r}") from None
    return value


def fire_times_between(
    cron: str, timezone: str, after: dt.datetime, until: dt.datetime, cap: int = 1000
) -> list[dt.datetime]:
    """Fire times ``t`` with ``after < t <= until`` (UTC), at most ``cap`` of them."""
    zone = ZoneInfo(timezone)
    six = len(cron.split()) == 6
    it = croniter(cron, after.astimezone(zone), second_at_beginning=six)
    times: list[dt.datetime] = []
    while len(times) < cap:
        nxt: dt.datetime = it.get_next(dt.datetime)
        nxt = nxt.astimezone(dt.UTC)
        if nxt > until:
            break
        times.append(nxt)
    return times


def next_fire(cron: str, timezone: str, after: dt.datetime) -> dt.datetime:
    zone = ZoneInfo(timezone)
    six = len(cron.split()) == 6
    it = croniter(cron, after.astimezone(zone), second_at_beginning=six)
    value: dt.datetime = it.get_next(dt.datetime)
    return value.astimezone(dt.UTC)


def fires_to_run(times: list[dt.datetime], now: dt.datetime, grace_s: float) -> list[dt.datetime]:
    """Which due fire times to enqueue: every one within ``grace_s`` of now (a tick that
    ran a little late still fires each), else — after downtime — only the latest, once."""
    recent = [t for t in times if (now - t).total_seconds() <= grace_s]
    if recent:
        return recent
    return times[-1:]


@dataclass(frozen=True)
class ScheduleInput:
    name: str | None = None
    cron: str | None = None
    payload: Any = None
    has_payload: bool = False
    timezone: str | None = None
    active: bool | None = None
    description: str | None = None
    has_description: bool = False


def parse_schedule(body: bytes, *, partial: bool) -> ScheduleInput:
    raw = parse_json_object(body)
    unknown = sorted(set(raw) - SCHEDULE_FIELDS)
    if unknown:
        raise invalid("VALIDATION_ERROR", f"unknown field: {unknown[0]}")
    if not partial:
        for required in ("name", "cron"):
            if raw.get(required) is None or raw.get(required) == "":
                raise invalid("VALIDATION_ERROR", f"{required} is required")
    if partial and not raw:
        raise invalid("VALIDATION_ERROR", "nothing to change")
    name = None
    if raw.get("name") is not None:
        name = check_name(raw["name"])
    elif "name" in raw:
        raise invalid("VALIDATION_ERROR", "name can't be null")
    cron = check_cron(raw["cron"]) if "cron" in raw else None
    timezone = check_timezone(raw["timezone"]) if "timezone" in raw else None
    if not partial and timezone is None:
        timezone = "UTC"
    active = raw.get("active")
    if "active" in raw and not isinstance(active, bool):
        raise invalid("VALIDATION_ERROR", "active must be true or false")
    description = raw.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > DESCRIPTION_MAX
    ):
        raise invalid(
            "VALIDATION_ERROR", f"description must be a string of at most {DESCRIPTION_MAX}"
        )
    if description is not None:
        check_text(description, "description")
    return ScheduleInput(
        name=name,
        cron=cron,
        payload=check_payload(raw.get("payload"), required=False),
        has_payload="payload" in raw,
        timezone=timezone,
        active=active if "active" in raw else (None if partial else True),
        description=description,
        has_description="description" in raw,
    )


# --- running ------------------------------------------------------------------------------


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """Exponential from 2 s (2, 4, 8, …) with ±25 % jitter, capped at an hour."""
    base = min(BACKOFF_MAX_S, BACKOFF_BASE_S * (2 ** max(0, attempt - 1)))
    r = rng or random
    return base * (0.75 + 0.5 * r.random())


def check_uuid(value: str) -> str:
    """A job or schedule id from the path; anything else is simply not found."""
    if not re.fullmatch(
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", value
    ):
        raise invalid("NOT_FOUND", "no such job", status=404)
    return value.lower()


def decode_result(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
