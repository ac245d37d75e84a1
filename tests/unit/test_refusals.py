"""One refusal, every surface: ``Outcome.refuse`` renders any ``GatewayError`` in the
surface's envelope, with its status from the one status table, its headers over the
ones already set, and the facts the request log needs."""

from __future__ import annotations

import orjson
import psycopg
import pytest

from gateway.admission.decision import QuotaExceeded
from gateway.admission.local_deny import rate_limited_error
from gateway.auth import rules
from gateway.auth.rules import AuthError
from gateway.errors import STATUS_BY_CODE, GatewayError
from gateway.http.jobs import jobs_error_body
from gateway.query.envelope import error_body
from gateway.query.pipeline import Outcome

RATE_HEADERS = {"X-RateLimit-Limit": "5", "X-Project-Id": "p1"}


def _rate_limited() -> GatewayError:
    return rate_limited_error(
        5, 1_700_000_000, 7, 60, project_id="p1", key_id="k1", admission="local_deny"
    )


def test_a_rate_limit_refusal_in_the_data_envelope() -> None:
    out = Outcome(status=200, body=b"").refuse(_rate_limited(), error_body)
    assert out.status == 429 and out.error_code == "RATE_LIMIT_EXCEEDED"
    assert (out.project_id, out.key_id, out.admission) == ("p1", "k1", "local_deny")
    assert out.headers["Retry-After"] == "7" and out.headers["X-RateLimit-Remaining"] == "0"
    body = orjson.loads(out.body)
    assert body["data"] is None and body["status"] == 429
    assert body["error"]["details"] == {"limit": 5, "windowSeconds": 60, "retryAfter": 7}


def test_the_same_refusal_in_the_auth_and_jobs_envelopes() -> None:
    auth = orjson.loads(
        Outcome(status=200, body=b"").refuse(_rate_limited(), rules.error_body).body
    )
    assert auth == {
        "ok": False,
        "error": {"code": "RATE_LIMIT_EXCEEDED", "message": auth["error"]["message"]},
    }
    quota = GatewayError("QUOTA_EXCEEDED", "over", details={"quota": {"used": 3, "limit": 3}})
    jobs = orjson.loads(Outcome(status=200, body=b"").refuse(quota, jobs_error_body).body)
    assert jobs == {
        "ok": False,
        "error": {"code": "QUOTA_EXCEEDED", "message": "over"},
        "quota": {"used": 3, "limit": 3},
    }


def test_a_refusal_keeps_the_admission_headers_and_the_project_already_known() -> None:
    out = Outcome(status=200, body=b"", headers=dict(RATE_HEADERS), project_id="p0", key_id="k0")
    out.refuse(GatewayError("TABLE_NOT_FOUND", "no such table"))
    assert out.status == 404 and out.headers == RATE_HEADERS
    assert (out.project_id, out.key_id, out.admission) == ("p0", "k0", None)


def test_a_quota_refusal_carries_its_violations_and_facts() -> None:
    violations = [{"type": "requests", "used": 3, "limit": 3, "percentUsed": 100.0}]
    error = QuotaExceeded(
        violations, {"Retry-After": "9"}, project_id="p1", key_id="k1", admission="quota_exceeded"
    )
    out = Outcome(status=200, body=b"").refuse(error)
    body = orjson.loads(out.body)
    assert out.status == 429 and out.headers == {"Retry-After": "9"}
    assert body["error"]["violations"] == violations and out.admission == "quota_exceeded"


def test_a_lost_database_is_a_503_with_retry_after_and_a_bug_propagates() -> None:
    out = Outcome(status=200, body=b"").refuse_exception(
        psycopg.OperationalError("gone"), rules.error_body
    )
    assert out.status == 503 and out.headers["Retry-After"] == "1"
    assert orjson.loads(out.body)["error"]["code"] == "SERVICE_UNAVAILABLE"
    with pytest.raises(KeyError):
        Outcome(status=200, body=b"").refuse_exception(KeyError("bug"))


def test_one_status_table_serves_the_auth_codes() -> None:
    assert AuthError("SESSION_EXPIRED", "x").status == STATUS_BY_CODE["SESSION_EXPIRED"] == 401
    assert AuthError("EMAIL_IN_USE", "x").status == 409
    assert AuthError("RATE_LIMIT", "x").status == 429
    assert GatewayError("INSUFFICIENT_SCOPES", "x").status == 403
