"""The pure quota rules: limit values, growing requests, violations and their 429."""

from __future__ import annotations

import pytest

from gateway.admission.decision import QuotaExceeded
from gateway.quotas.plans import (
    LimitError,
    effective,
    parse_limit,
    percent,
    quota_code,
    request_grows,
    violations_for,
)


def test_parse_limit_numbers_units_unlimited_and_inherit() -> None:
    assert parse_limit("10000", "requests_per_day") == 10_000
    assert parse_limit("0", "requests_per_day") == 0
    assert parse_limit("unlimited", "requests_per_day") == -1
    assert parse_limit("-1", "db_size_bytes") == -1
    assert parse_limit("20KB", "bandwidth_bytes_monthly") == 20 * 1024
    assert parse_limit("1.5 GB", "db_size_bytes") == 1536 * 1024**2
    assert parse_limit("plan", "db_size_bytes", allow_inherit=True) is None
    with pytest.raises(LimitError, match="--requests-per-day"):
        parse_limit("plan", "requests_per_day")  # plans themselves can't inherit
    with pytest.raises(LimitError, match="KB"):
        parse_limit("lots", "bandwidth_bytes_monthly")
    with pytest.raises(LimitError):
        parse_limit("10KB", "requests_per_day")  # units only for bytes
    with pytest.raises(LimitError, match="can't be unlimited"):
        parse_limit("unlimited", "rate_limit_per_minute")
    with pytest.raises(LimitError, match="at most"):
        parse_limit(str(2**31), "rate_limit_per_minute")
    with pytest.raises(LimitError):
        parse_limit("-5", "requests_per_day")


def test_effective_limit_override_wins_and_minus_one_is_unlimited() -> None:
    assert effective(100, None) == 100
    assert effective(100, 7) == 7
    assert effective(100, -1) is None
    assert effective(-1, None) is None
    assert effective(-1, 5) == 5


def test_inserts_and_updates_grow_deletes_and_selects_do_not() -> None:
    def q(op: str) -> dict[str, object]:
        return {"operation": op, "table": "t"}

    assert request_grows({"query": q("insert")}, batch=False)
    assert request_grows({"query": q("update")}, batch=False)
    assert not request_grows({"query": q("delete")}, batch=False)
    assert not request_grows({"query": q("select")}, batch=False)
    assert not request_grows(None, batch=False)
    assert not request_grows({"query": "nonsense"}, batch=False)
    assert request_grows({"queries": [q("select"), q("insert")]}, batch=True)
    assert not request_grows({"queries": [q("select"), q("delete")]}, batch=True)
    assert not request_grows({"queries": "x"}, batch=True)


def test_violations_in_the_original_order_and_shape() -> None:
    found = violations_for(
        cost=1,
        grows=True,
        requests=(10, 10),
        bandwidth=(2048, 1024),
        database=(300, 200),
    )
    assert [v["type"] for v in found] == ["database", "requests", "bandwidth"]
    assert found[2] == {"type": "bandwidth", "used": 2048, "limit": 1024, "percentUsed": 200.0}
    assert quota_code(found) == "MULTIPLE_QUOTAS_EXCEEDED"
    # a read is not refused for the database size
    reads = violations_for(
        cost=1, grows=False, requests=(0, 10), bandwidth=(0, None), database=(300, 200)
    )
    assert reads == []
    # a batch that doesn't fit the day's rest is a requests violation (used stays used)
    batch = violations_for(
        cost=3, grows=False, requests=(8, 10), bandwidth=(0, 100), database=(None, 5)
    )
    assert batch == [{"type": "requests", "used": 8, "limit": 10, "percentUsed": 80.0}]
    assert quota_code(batch) == "REQUEST_QUOTA_EXCEEDED"
    # unlimited quotas never refuse
    assert (
        violations_for(
            cost=1, grows=True, requests=(10**9, None), bandwidth=(10**12, None), database=(1, None)
        )
        == []
    )


def test_percent() -> None:
    assert percent(1, 3) == 33.33
    assert percent(5, 0) == 100.0
    assert percent(5, None) is None


def test_quota_error_carries_violations_in_both_places() -> None:
    v = [{"type": "bandwidth", "used": 30, "limit": 20, "percentUsed": 150.0}]
    err = QuotaExceeded(v, {"Retry-After": "5"})
    assert (err.code, err.status) == ("BANDWIDTH_QUOTA_EXCEEDED", 429)
    body = err.to_error()
    assert body["violations"] == v and body["details"] == {"violations": v}
    assert "bandwidth" in body["message"].lower()
    db = QuotaExceeded([{"type": "database", "used": 9, "limit": 8, "percentUsed": 112.5}], {})
    assert db.code == "DATABASE_QUOTA_EXCEEDED"
    assert "deletes still work" in db.message
    both = QuotaExceeded([*db.violations, *v], {})
    assert both.code == "MULTIPLE_QUOTAS_EXCEEDED"
    assert both.to_error()["violations"] == [*db.violations, *v]
