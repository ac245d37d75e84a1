"""The jobs API against one real ``gateway serve`` and a real local HTTP receiver."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.harness import ClusterStarter, GatewayCluster
from tests.support.jobs_receiver import JOBS, Receiver, set_endpoint
from tests.support.polling import eventually

ENV = {
    "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true",
    "GATEWAY_JOBS_POLL_S": "0.2",
    "GATEWAY_JOBS_CONCURRENCY": "8",
    "GATEWAY_JOBS_PER_PROJECT": "8",
}


@pytest.fixture(scope="module")
def cluster(module_cluster: ClusterStarter) -> GatewayCluster:
    return module_cluster(1, env=ENV)


@pytest.fixture
def project(make_project: Any, pg_url: str, receiver: Receiver) -> dict[str, Any]:
    p = make_project()
    receiver.secrets.append(set_endpoint(pg_url, p["name"], receiver.url()))
    return p


def client(cluster: GatewayCluster, key: str | None) -> httpx.Client:
    headers = {"x-api-key": key} if key else {}
    return httpx.Client(base_url=cluster.urls[0], headers=headers, timeout=10.0)


def job_of(c: httpx.Client, job_id: str) -> dict[str, Any]:
    r = c.get(f"{JOBS}/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()["data"]["job"]


def wait_status(c: httpx.Client, job_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
    assert eventually(lambda: job_of(c, job_id)["status"] == status, timeout=timeout), job_of(
        c, job_id
    )
    return job_of(c, job_id)


def test_enqueue_deliver_get_list(
    cluster: GatewayCluster, project: dict[str, Any], receiver: Receiver
) -> None:
    with client(cluster, project["server_key"]) as c:
        r = c.post(JOBS, json={"name": "send.email", "payload": {"to": "a@example.com"}})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["ok"] is True
        job = body["data"]["job"]
        assert job["status"] == "pending" and job["attemptsMade"] == 0
        assert job["maxAttempts"] == 3 and job["payload"] == {"to": "a@example.com"}
        assert body["quota"] == {"used": 1, "limit": 1000, "remaining": 999, "unlimited": False}
        done = wait_status(c, job["id"], "completed")
        assert done["attemptsMade"] == 1
        assert done["result"] == {"received": job["id"], "attempt": 1}
        assert done["startedAt"] and done["finishedAt"]
        [delivery] = receiver.for_job(job["id"])
        assert delivery.signature_ok and delivery.header_id == job["id"]
        assert delivery.payload == {"to": "a@example.com"} and delivery.attempt == 1

        listed = c.get(JOBS, params={"name": "send.email", "status": "completed"}).json()["data"]
        assert [j["id"] for j in listed["jobs"]] == [job["id"]]
        assert listed["total"] == 1 and listed["hasMore"] is False


def test_keys_and_scopes(cluster: GatewayCluster, project: dict[str, Any]) -> None:
    with client(cluster, project["public_key"]) as c:
        r = c.post(JOBS, json={"name": "x", "payload": {}})
        assert r.status_code == 403
        assert r.json() == {
            "ok": False,
            "error": {"code": "INSUFFICIENT_SCOPES", "message": r.json()["error"]["message"]},
        }
        assert c.get(JOBS).status_code == 403
    with client(cluster, None) as c:
        assert c.post(JOBS, json={"name": "x"}).status_code == 401
    with client(cluster, "sheen_sk_" + "x" * 40) as c:
        r = c.get(JOBS)
        assert r.status_code == 401 and r.json()["error"]["code"] == "INVALID_API_KEY"


MALFORMED: list[tuple[Any, str]] = [
    (b"", "VALIDATION_ERROR"),
    (b"not json", "VALIDATION_ERROR"),
    (b"[1,2]", "VALIDATION_ERROR"),
    (b'"name"', "VALIDATION_ERROR"),
    (b"{", "VALIDATION_ERROR"),
    ({}, "VALIDATION_ERROR"),
    ({"name": ""}, "VALIDATION_ERROR"),
    ({"name": 12, "payload": {}}, "INVALID_JOB_NAME"),
    ({"name": "a b", "payload": {}}, "INVALID_JOB_NAME"),
    ({"name": "sys:reserved", "payload": {}}, "INVALID_JOB_NAME"),
    ({"name": "x" * 101, "payload": {}}, "INVALID_JOB_NAME"),
    ({"name": "ok", "payload": {}, "delay": "soon"}, "INVALID_DELAY"),
    ({"name": "ok", "payload": {}, "delay": "-5s"}, "INVALID_DELAY"),
    ({"name": "ok", "payload": {}, "delay": True}, "INVALID_DELAY"),
    ({"name": "ok", "payload": {}, "delay": "8d"}, "DELAY_TOO_LONG"),
    ({"name": "ok", "payload": {}, "delay": "169h"}, "DELAY_TOO_LONG"),
    ({"name": "ok", "payload": {}, "runAt": "tomorrow"}, "INVALID_DELAY"),
    ({"name": "ok", "payload": {}, "runAt": "2999-01-01T00:00:00Z"}, "DELAY_TOO_LONG"),
    (
        {"name": "ok", "payload": {}, "delay": "1s", "runAt": "2030-01-01T00:00:00Z"},
        "VALIDATION_ERROR",
    ),
    ({"name": "ok", "payload": {}, "timeoutMs": 0}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": {}, "timeoutMs": 31 * 60_000}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": {}, "timeoutMs": "10"}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": {}, "maxAttempts": 0}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": {}, "maxAttempts": 1.5}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": {}, "concurrencyKey": 5}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": {}, "idempotencyKey": ""}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": {}, "idempotencyKey": "k" * 300}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": {}, "surprise": 1}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": "x" * (257 * 1024)}, "INVALID_PAYLOAD"),
    (b"x" * (300 * 1024), "PAYLOAD_TOO_LARGE"),
    # the original's checks: name before the name rules, payload an object or array
    ({"payload": {}}, "VALIDATION_ERROR"),
    ({"name": "", "payload": {}}, "VALIDATION_ERROR"),
    ({"name": None, "payload": {}}, "VALIDATION_ERROR"),
    ({"name": "ok"}, "INVALID_PAYLOAD"),
    ({"name": "ok", "payload": None}, "INVALID_PAYLOAD"),
    ({"name": "ok", "payload": "text"}, "INVALID_PAYLOAD"),
    ({"name": "ok", "payload": 12}, "INVALID_PAYLOAD"),
    ({"name": "ok", "payload": True}, "INVALID_PAYLOAD"),
    # NUL in any stored string (PostgreSQL text and jsonb can't hold one): a 400, not a 500
    ({"name": "ok", "payload": {"a": "x\x00y"}}, "INVALID_PAYLOAD"),
    ({"name": "ok", "payload": {"k\x00": 1}}, "INVALID_PAYLOAD"),
    ({"name": "ok", "payload": [["\x00"]]}, "INVALID_PAYLOAD"),
    ({"name": "ok", "payload": {}, "concurrencyKey": "a\x00b"}, "VALIDATION_ERROR"),
    ({"name": "ok", "payload": {}, "idempotencyKey": "\x00"}, "VALIDATION_ERROR"),
    ({"name": "o\x00k", "payload": {}}, "INVALID_JOB_NAME"),
    # dates Python and PostgreSQL can't both hold
    ({"name": "ok", "payload": {}, "runAt": "0001-01-01T00:00:00+01:00"}, "INVALID_DELAY"),
    ({"name": "ok", "payload": {}, "runAt": "9999-12-31T23:00:00-05:00"}, "INVALID_DELAY"),
]


def test_malformed_enqueues_are_4xx(cluster: GatewayCluster, project: dict[str, Any]) -> None:
    with client(cluster, project["server_key"]) as c:
        for body, code in MALFORMED:
            if isinstance(body, bytes):
                r = c.post(JOBS, content=body, headers={"content-type": "application/json"})
            else:
                r = c.post(JOBS, json=body)
            assert 400 <= r.status_code < 500, (body if len(str(body)) < 200 else code, r.text)
            assert r.json()["ok"] is False
            assert r.json()["error"]["code"] == code, (str(body)[:100], r.text)
        # list and path parameters
        for params, code in [
            ({"limit": "101"}, "INVALID_LIMIT"),
            ({"limit": "0"}, "INVALID_LIMIT"),
            ({"limit": "x"}, "INVALID_LIMIT"),
            ({"offset": "-1"}, "INVALID_OFFSET"),
            ({"status": "sleeping"}, "VALIDATION_ERROR"),
            ({"orderBy": "id; drop"}, "VALIDATION_ERROR"),
            ({"orderDir": "up"}, "VALIDATION_ERROR"),
        ]:
            r = c.get(JOBS, params=params)
            assert r.status_code == 400 and r.json()["error"]["code"] == code, (params, r.text)
        assert c.get(f"{JOBS}/not-a-uuid").status_code == 404
        assert c.get(f"{JOBS}/00000000-0000-0000-0000-000000000000").status_code == 404
        assert c.post(f"{JOBS}/00000000-0000-0000-0000-000000000000/cancel").status_code == 404
        # nothing was enqueued by any of it
        assert c.get(JOBS).json()["data"]["total"] == 0


def test_delay_run_at_and_cancel(
    cluster: GatewayCluster, project: dict[str, Any], receiver: Receiver
) -> None:
    with client(cluster, project["server_key"]) as c:
        sent = time.monotonic()
        delayed = c.post(JOBS, json={"name": "later", "payload": {}, "delay": "2s"}).json()
        job = delayed["data"]["job"]
        assert job["status"] == "delayed"
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
        run_at = c.post(JOBS, json={"name": "at", "payload": {}, "runAt": at}).json()
        assert run_at["data"]["job"]["status"] == "delayed"
        cancel_me = c.post(JOBS, json={"name": "never", "payload": {}, "delay": "1h"}).json()
        cancelled = c.post(f"{JOBS}/{cancel_me['data']['job']['id']}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["data"]["job"]["status"] == "cancelled"

        wait_status(c, job["id"], "completed")
        [d] = receiver.for_job(job["id"])
        assert d.started - sent >= 1.5  # never before its delay (database clock)
        wait_status(c, run_at["data"]["job"]["id"], "completed")

        # cancel only pending/delayed; retry only failed
        r = c.post(f"{JOBS}/{job['id']}/cancel")
        assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_ERROR"
        r = c.post(f"{JOBS}/{job['id']}/retry")
        assert r.status_code == 400
        assert receiver.for_job(cancel_me["data"]["job"]["id"]) == []
        listed = c.get(JOBS, params={"status": "cancelled"}).json()["data"]
        assert [j["id"] for j in listed["jobs"]] == [cancel_me["data"]["job"]["id"]]


def test_retries_backoff_and_retry_of_failed(
    cluster: GatewayCluster, project: dict[str, Any], receiver: Receiver
) -> None:
    with client(cluster, project["server_key"]) as c:
        r = c.post(
            JOBS, json={"name": "flaky", "payload": {"failTimes": 1}, "maxAttempts": 3}
        ).json()
        flaky = r["data"]["job"]["id"]
        r = c.post(JOBS, json={"name": "broken", "payload": {"status": 500}, "maxAttempts": 3})
        broken = r.json()["data"]["job"]["id"]

        done = wait_status(c, flaky, "completed")
        assert done["attemptsMade"] == 2
        failed = wait_status(c, broken, "failed", timeout=40)
        assert failed["attemptsMade"] == 3 and "500" in failed["error"]
        attempts = receiver.for_job(broken)
        assert [d.attempt for d in attempts] == [1, 2, 3]
        # exponential backoff from 2 s with ±25 % jitter: ≥ 1.5 s, then ≥ 3 s
        assert attempts[1].started - attempts[0].ended >= 1.5
        assert attempts[2].started - attempts[1].ended >= 3.0
        assert all(d.signature_ok for d in attempts)

        retried = c.post(f"{JOBS}/{broken}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["data"]["job"]["status"] == "pending"
        assert eventually(lambda: len(receiver.for_job(broken)) == 4, timeout=10)


def test_idempotency_key(cluster: GatewayCluster, project: dict[str, Any]) -> None:
    with client(cluster, project["server_key"]) as c:
        body = {"name": "once", "payload": {"n": 1}, "idempotencyKey": "order-42", "delay": "1h"}
        first = c.post(JOBS, json=body)
        second = c.post(JOBS, json=body)
        assert first.status_code == 201 and second.status_code == 200
        assert first.json()["data"]["job"]["id"] == second.json()["data"]["job"]["id"]
        assert second.json()["quota"]["used"] == first.json()["quota"]["used"] == 1
        other = c.post(JOBS, json={**body, "idempotencyKey": "order-43"})
        assert other.status_code == 201
        assert other.json()["data"]["job"]["id"] != first.json()["data"]["job"]["id"]
        assert c.get(JOBS).json()["data"]["total"] == 2


def test_schedules_crud(cluster: GatewayCluster, project: dict[str, Any]) -> None:
    base = f"{JOBS}/schedules"
    with client(cluster, project["server_key"]) as c:
        r = c.post(base, json={"name": "nightly", "cron": "0 3 * * *", "payload": {"a": 1}})
        assert r.status_code == 201, r.text
        s = r.json()["data"]["schedule"]
        assert (
            s["timezone"] == "UTC" and s["active"] is True and s["nextRunAt"].endswith("03:00:00Z")
        )
        r = c.post(base, json={"name": "fast", "cron": "*/10 * * * * *", "timezone": "Asia/Tokyo"})
        assert r.status_code == 201, r.text
        for bad, code in [
            ({"name": "x", "cron": "every day"}, "INVALID_CRON"),
            ({"name": "x", "cron": "* * *"}, "INVALID_CRON"),
            ({"name": "x", "cron": "61 * * * *"}, "INVALID_CRON"),
            ({"name": "x", "cron": "* * * * * * *"}, "INVALID_CRON"),
            ({"name": "x", "cron": 5}, "INVALID_CRON"),
            ({"name": "x", "cron": "* * * * *", "timezone": "Mars/Base"}, "VALIDATION_ERROR"),
            ({"cron": "* * * * *"}, "VALIDATION_ERROR"),
            ({"name": "x", "cron": "* * * * *", "active": "yes"}, "VALIDATION_ERROR"),
            # valid syntax that never fires: Feb 30, Apr 31 (6 fields, seconds first)
            ({"name": "x", "cron": "0 0 30 2 *"}, "INVALID_CRON"),
            ({"name": "x", "cron": "0 0 0 31 4 *"}, "INVALID_CRON"),
            ({"name": "", "cron": "* * * * *"}, "VALIDATION_ERROR"),
            ({"name": "x", "cron": "* * * * *", "payload": "text"}, "INVALID_PAYLOAD"),
            ({"name": "x", "cron": "* * * * *", "payload": {"\x00": 1}}, "INVALID_PAYLOAD"),
            ({"name": "x", "cron": "* * * * *", "description": "a\x00"}, "VALIDATION_ERROR"),
            ({"name": "x", "cron": "* * * * *", "timezone": "UTC\x00"}, "VALIDATION_ERROR"),
            ({"name": "x\x00", "cron": "* * * * *"}, "INVALID_JOB_NAME"),
            ({"name": "x", "cron": "* * * * \x00"}, "INVALID_CRON"),
        ]:
            r = c.post(base, json=bad)
            assert r.status_code == 400 and r.json()["error"]["code"] == code, (bad, r.text)
        assert c.post(base, json={"name": "nightly", "cron": "* * * * *"}).status_code == 409
        listed = c.get(base).json()["data"]["schedules"]
        assert [x["name"] for x in listed] == ["nightly", "fast"]
        r = c.patch(f"{base}/{s['id']}", json={"active": False, "cron": "0 4 * * *"})
        assert r.status_code == 200, r.text
        assert r.json()["data"]["schedule"]["active"] is False
        assert r.json()["data"]["schedule"]["cron"] == "0 4 * * *"
        r = c.patch(f"{base}/{s['id']}", json={"cron": "nope"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_CRON"
        for bad, code in [
            ({"cron": "0 0 30 2 *"}, "INVALID_CRON"),
            ({"description": "\x00"}, "VALIDATION_ERROR"),
            ({"payload": 5}, "INVALID_PAYLOAD"),
        ]:
            r = c.patch(f"{base}/{s['id']}", json=bad)
            assert r.status_code == 400 and r.json()["error"]["code"] == code, (bad, r.text)
        assert c.delete(f"{base}/{s['id']}").status_code == 200
        assert c.delete(f"{base}/{s['id']}").status_code == 404
        assert c.patch(f"{base}/bogus", json={"active": True}).status_code == 404
        r = c.delete(f"{base}/{listed[1]['id']}")
        assert r.status_code == 200


def test_no_endpoint_fails_the_attempt(
    cluster: GatewayCluster, make_project: Any, db: psycopg.Connection[Any]
) -> None:
    p = make_project()
    with client(cluster, p["server_key"]) as c:
        job = c.post(JOBS, json={"name": "lost", "payload": {}, "maxAttempts": 1}).json()
        failed = wait_status(c, job["data"]["job"]["id"], "failed")
        assert "no endpoint" in failed["error"]


def test_jobs_calls_are_request_logged_like_every_request(
    cluster: GatewayCluster, make_project: Any, db: psycopg.Connection[Any]
) -> None:
    """The jobs API comes in through ``Pipeline.admitted``: one request-log row per call,
    refusals included, with the jobs API's own envelope kept."""
    p = make_project()
    missing = "00000000-0000-0000-0000-000000000000"
    with client(cluster, p["server_key"]) as c:
        created = c.post(JOBS, json={"name": "logged", "payload": {}, "delay": "1h"})
        assert created.status_code == 201 and "X-Request-Id" in created.headers
        r = c.get(f"{JOBS}/{missing}")
        assert r.status_code == 404
        assert r.json() == {"ok": False, "error": {"code": "NOT_FOUND", "message": "no such job"}}
        assert "X-RateLimit-Limit" in r.headers  # admission ran
    with client(cluster, p["public_key"]) as c:
        assert c.get(JOBS).status_code == 403

    def rows() -> list[dict[str, Any]]:
        return db.execute(
            "SELECT method, path, status_code, error_code, request_id "
            "FROM gateway.request_log WHERE project_id = %s ORDER BY id",
            [p["id"]],
        ).fetchall()

    assert eventually(lambda: len(rows()) >= 3, timeout=10), rows()
    logged = [(r["method"], r["path"], r["status_code"], r["error_code"]) for r in rows()]
    assert logged == [
        ("POST", "/jobs", 201, None),
        ("GET", f"/jobs/{missing}", 404, "NOT_FOUND"),
        ("GET", "/jobs", 403, "INSUFFICIENT_SCOPES"),
    ]
    assert rows()[0]["request_id"] == created.headers["X-Request-Id"]
