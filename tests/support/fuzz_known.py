"""The requests that reach a 500 on main and are other engineers' open items.

The fuzzer's default run skips exactly these classes (``known_issue`` names the item);
``test_known_500s`` in tests/cluster/test_fuzz_routes.py keeps one reproducing request of
each as a strict xfail. When the fix of an item is merged, the lead deletes its entry
here and its xfail there, and the fuzzer covers that class again.

Each predicate is as narrow as the item, so the fuzzer still fails on anything else.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from croniter import croniter

from gateway.jobs.rules import JobsError, check_cron, parse_instant
from tests.support.fuzz_routes import JOBS, FuzzRequest

# issue 21 (i21-auth): "NUL anywhere in a stored string → 400 naming the field"
NUL_IN_JOB_FIELDS = (
    "i21: NUL in the jobs API's payload, concurrencyKey, idempotencyKey, description"
)
# issue 21 (i21-auth): "dates outside what PostgreSQL and Python both represent → 400"
RUN_AT_OUT_OF_RANGE = "i21: runAt outside years 1-9999 in UTC"
# issue 21 (i21-auth): "a cron expression with no fire time in the next 5 years → 400"
CRON_NEVER_FIRES = "i21: a cron expression that never fires"

NUL_FIELDS = ("payload", "concurrencyKey", "idempotencyKey", "description")
NEVER_WITHIN = dt.timedelta(days=5 * 366)


def _json_body(request: FuzzRequest) -> Any:
    try:
        return json.loads(request.body)
    except (ValueError, RecursionError):  # the gateway refuses both: 400
        return None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _run_at_out_of_range(value: Any) -> bool:
    try:
        instant = parse_instant(value, "runAt", "INVALID_DELAY")
    except JobsError:
        return False
    try:
        instant.astimezone(dt.UTC)
    except OverflowError:
        return True
    return False


def _cron_never_fires(value: Any) -> bool:
    try:
        expression = check_cron(value)
    except JobsError:
        return False
    start = dt.datetime.now(dt.UTC)
    try:
        seconds_first = len(expression.split()) == 6
        following = croniter(expression, start, second_at_beginning=seconds_first)
        return bool(following.get_next(dt.datetime) - start > NEVER_WITHIN)
    except Exception:  # croniter gives up: no fire time at all
        return True


def _jobs_body_issue(body: dict[str, Any]) -> str | None:
    if any(_has_nul(body.get(field)) for field in NUL_FIELDS):
        return NUL_IN_JOB_FIELDS
    if "runAt" in body and _run_at_out_of_range(body["runAt"]):
        return RUN_AT_OUT_OF_RANGE
    if "cron" in body and _cron_never_fires(body["cron"]):
        return CRON_NEVER_FIRES
    return None


def known_issue(request: FuzzRequest) -> str | None:
    """The open item this request falls under, or None."""
    if request.path.startswith(JOBS) and request.method in ("POST", "PATCH"):
        body = _json_body(request)
        if isinstance(body, dict):
            return _jobs_body_issue(body)
    return None
