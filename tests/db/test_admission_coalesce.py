"""Coalesced admission (issue 16, part 1) against a real PostgreSQL.

To make a batch on purpose, a test holds one project's counter row with ``FOR UPDATE``
from another connection and lets a first admission block on it (statements_max = 1):
everything that arrives meanwhile queues, and goes as ONE ``gateway.admit_many``
statement when the row is released.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection

from gateway.admission.admitter import Admitter
from gateway.admission.decision import Admission, QuotaExceeded
from gateway.auth.tokens import token_hash
from gateway.control.keys import create_key, revoke_key
from gateway.control.projects import connect, set_limits
from gateway.errors import GatewayError
from tests.support.admission import (
    LONG_WINDOW_S,
    aconnect,
    admitter,
    counter_row,
    fresh_window,
    run,
)
from tests.support.owner_rows import make_session, make_user, revoke_sessions
from tests.support.quotas import override, set_usage

Answer = Admission | GatewayError


async def _answer(
    adm: Admitter, conn: AsyncConnection[Any], key: str, cost: int, **options: Any
) -> Answer:
    try:
        return await adm.admit(conn, key, cost, **options)
    except GatewayError as error:
        return error


async def _until(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def behind_a_held_row(
    adm: Admitter,
    pg_url: str,
    blocker: dict[str, Any],
    requests: list[tuple[str, int]] | list[tuple[str, int, dict[str, Any]]],
    *,
    cancel: set[int] = frozenset(),  # type: ignore[assignment]
) -> list[Answer | None]:
    """Queue ``requests`` (in this order) behind a statement blocked on ``blocker``'s
    counter row, then release the row: they go as one batch. A request may carry a third
    element, the ``admit`` options (``session_hash``, ``grows``). ``cancel``: indexes of
    requests cancelled while queued (their answer is None)."""
    conns = [await aconnect(pg_url) for _ in range(len(requests) + 1)]
    holder = await AsyncConnection.connect(pg_url)  # a transaction holding the row
    try:
        await adm.admit(conns[0], blocker["server_key"], 1)  # creates the row
        await holder.execute(
            "SELECT 1 FROM gateway.admission_counters WHERE project_id = %s FOR UPDATE",
            [blocker["id"]],
        )
        assert adm.coalescer is not None
        first = asyncio.ensure_future(adm.admit(conns[0], blocker["server_key"], 1))
        await _until(lambda: adm.coalescer.in_flight == 1, "the first statement is sent")
        await asyncio.sleep(0.1)  # it is waiting for the row on the server
        tasks = []
        for request, conn in zip(requests, conns[1:], strict=True):
            key, cost, options = (*request, {})[:3]
            tasks.append(asyncio.ensure_future(_answer(adm, conn, key, cost, **options)))
            await asyncio.sleep(0)  # this one is in the queue before the next arrives
        await _until(
            lambda: adm.coalescer.stats()["queued"] == len(requests), "all requests queued"
        )
        for i in cancel:
            tasks[i].cancel()
        await asyncio.sleep(0)
        await holder.rollback()
        await first
        answers: list[Answer | None] = []
        for task in tasks:
            try:
                answers.append(await task)
            except asyncio.CancelledError:
                answers.append(None)
        return answers
    finally:
        await holder.close()
        for c in conns:
            await c.close()


def _code(answer: Answer | None) -> str | None:
    if answer is None:
        return None
    return "admitted" if isinstance(answer, Admission) else answer.code


def test_a_batch_decides_one_project_in_arrival_order(
    pg_url: str, db: Any, make_project: Any
) -> None:
    blocker = make_project()
    project = make_project(rate_limit_per_minute=5)
    adm = admitter(pg_url, admission_statements_max=1)
    fresh_window(db, LONG_WINDOW_S, 60)
    key = project["server_key"]
    # costs 3, 3, 2 against a limit of 5: in arrival order → yes, no, yes (the denial
    # consumes nothing, so the 2 still fits); any other order answers differently.
    # The fourth (cost 1) is cancelled while queued: it never reaches the database.
    answers = run(
        behind_a_held_row(
            adm, pg_url, blocker, [(key, 3), (key, 3), (key, 2), (key, 1)], cancel={3}
        )
    )
    print("answers:", [_code(a) for a in answers], adm.stats())
    assert [_code(a) for a in answers] == [
        "admitted",
        "RATE_LIMIT_EXCEEDED",
        "admitted",
        None,
    ]
    first, refused, third = answers[0], answers[1], answers[2]
    assert isinstance(first, Admission) and first.rate_remaining == 2
    assert isinstance(third, Admission) and third.rate_remaining == 0
    assert isinstance(refused, GatewayError) and refused.status == 429
    assert refused.headers["X-RateLimit-Remaining"] == "2"
    assert int(refused.headers["Retry-After"]) >= 1
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == 5 and row["day_used"] == 5
    stats = adm.stats()
    assert stats["largest_batch"] == 3 and stats["coalesced"] == 3


def test_a_batch_mixing_keys_and_projects_answers_each_request(
    pg_url: str, db: Any, make_project: Any
) -> None:
    blocker = make_project()
    limited = make_project(rate_limit_per_minute=2)
    revoked_project = make_project()
    suspended = make_project()
    quota = make_project(requests_per_day=1)
    with connect(pg_url) as pconn:
        revoke_key(pconn, revoked_project["server_key_id"])
        set_limits(pconn, suspended["id"], status="suspended")
        expired = create_key(pconn, quota["id"], key_type="public")
    db.execute(
        "UPDATE gateway.api_keys SET expires_at = now() - interval '1 second' WHERE id = %s",
        [expired["id"]],
    )
    adm = admitter(pg_url, admission_statements_max=1)
    fresh_window(db, LONG_WINDOW_S, 60)
    requests = [
        (limited["server_key"], "admitted"),
        (revoked_project["server_key"], "REVOKED_API_KEY"),
        (quota["server_key"], "admitted"),
        ("sheen_sk_" + "0" * 40, "INVALID_API_KEY"),
        (limited["public_key"], "admitted"),  # another key of the same project
        (suspended["server_key"], "PROJECT_SUSPENDED"),
        (quota["public_key"], "REQUEST_QUOTA_EXCEEDED"),
        (revoked_project["public_key"], "admitted"),
        (expired["key"], "EXPIRED_API_KEY"),
        (limited["server_key"], "RATE_LIMIT_EXCEEDED"),
    ]
    answers = run(behind_a_held_row(adm, pg_url, blocker, [(k, 1) for k, _ in requests]))
    print("answers:", [_code(a) for a in answers])
    assert [_code(a) for a in answers] == [want for _, want in requests]
    assert adm.stats()["largest_batch"] == len(requests)
    # who was admitted, and their numbers
    a0, a2, a4, a7 = answers[0], answers[2], answers[4], answers[7]
    assert isinstance(a0, Admission) and isinstance(a4, Admission)
    assert (a0.project_id, a0.key_type, a0.rate_remaining) == (limited["id"], "server", 1)
    assert (a4.project_id, a4.key_type, a4.rate_remaining) == (limited["id"], "public", 0)
    assert isinstance(a2, Admission) and (a2.project_id, a2.quota_used) == (quota["id"], 1)
    assert isinstance(a7, Admission) and a7.project_id == revoked_project["id"]
    over_quota = answers[6]
    assert isinstance(over_quota, QuotaExceeded) and over_quota.status == 429
    assert over_quota.violations[0]["used"] == 1 and over_quota.violations[0]["limit"] == 1
    for i in (1, 3, 8):
        answer = answers[i]
        assert isinstance(answer, GatewayError) and answer.status == 401
    suspended_answer = answers[5]
    assert isinstance(suspended_answer, GatewayError) and suspended_answer.status == 403
    # denials consumed nothing; the refused keys' projects have no counter row at all
    limited_row = counter_row(db, limited["id"])
    assert limited_row is not None and limited_row["window_count"] == 2
    quota_row = counter_row(db, quota["id"])
    assert quota_row is not None and quota_row["day_used"] == 1
    assert counter_row(db, suspended["id"]) is None


def test_a_batch_carries_sessions_and_quota_inputs_per_request(
    pg_url: str, db: Any, make_project: Any
) -> None:
    """Sessions (0009) and the database-size quota (0010) in one batch: each request's
    session hash and "grows" flag reach its own element."""
    blocker = make_project()
    app = make_project()
    full = make_project()
    override(pg_url, full["id"], db_size_bytes=8192)
    set_usage(db, full["id"], db_size=16384)
    alice, bob = make_user(pg_url, app["id"]), make_user(pg_url, app["id"])
    valid = make_session(pg_url, app["id"], alice)
    revoked = make_session(pg_url, app["id"], bob)
    revoke_sessions(pg_url, bob)
    expired = make_session(pg_url, app["id"], alice, ttl_s=-10)
    key = app["public_key"]
    adm = admitter(pg_url, admission_statements_max=1)
    requests: list[tuple[str, int, dict[str, Any]]] = [
        (key, 1, {"session_hash": token_hash(valid)}),
        (key, 1, {"session_hash": token_hash(revoked)}),
        (full["server_key"], 1, {"grows": True}),
        (key, 1, {}),
        (key, 1, {"session_hash": token_hash(expired)}),
        (full["server_key"], 1, {"grows": False}),
        (key, 1, {"session_hash": token_hash(valid), "grows": True}),
    ]
    answers = run(behind_a_held_row(adm, pg_url, blocker, requests))
    print("answers:", [_code(a) for a in answers])
    assert [_code(a) for a in answers] == [
        "admitted",
        "SESSION_NOT_FOUND",
        "DATABASE_QUOTA_EXCEEDED",
        "admitted",
        "SESSION_EXPIRED",
        "admitted",
        "admitted",
    ]
    assert adm.stats()["largest_batch"] == len(requests)
    first, plain, last = answers[0], answers[3], answers[6]
    assert isinstance(first, Admission) and first.principal.user_id == alice
    assert isinstance(plain, Admission) and plain.principal.user_id is None
    assert isinstance(last, Admission) and last.principal.user_id == alice
    for i in (1, 4):
        answer = answers[i]
        assert isinstance(answer, GatewayError) and answer.status == 401
    over = answers[2]
    assert isinstance(over, GatewayError) and over.status == 429
    assert over.to_error()["violations"] == [
        {"type": "database", "used": 16384, "limit": 8192, "percentUsed": 200.0}
    ]


def test_queued_requests_time_out_each_with_a_503(pg_url: str, db: Any, make_project: Any) -> None:
    """The row stays held past every deadline: the blocked statement, the queued batch
    behind it, each request → 503 with Retry-After, within its own deadline; after the
    row is released the same connections admit again."""
    project = make_project()
    adm = admitter(pg_url, admission_statements_max=1, admission_timeout_ms=600)
    key = project["server_key"]

    async def scenario() -> list[Answer]:
        conns = [await aconnect(pg_url) for _ in range(4)]
        holder = await AsyncConnection.connect(pg_url)
        try:
            await adm.admit(conns[0], key, 1)
            await holder.execute(
                "SELECT 1 FROM gateway.admission_counters WHERE project_id = %s FOR UPDATE",
                [project["id"]],
            )
            answers = await asyncio.wait_for(
                asyncio.gather(*(_answer(adm, c, key, 1) for c in conns)), timeout=10
            )
            await holder.rollback()
            for c in conns:
                await adm.admit(c, key, 1)
            return list(answers)
        finally:
            await holder.close()
            for c in conns:
                await c.close()

    answers = run(scenario())
    assert [(_code(a), getattr(a, "status", None)) for a in answers] == [
        ("SERVICE_UNAVAILABLE", 503)
    ] * 4
    assert all(a.headers == {"Retry-After": "1"} for a in answers if isinstance(a, GatewayError))
    stats = adm.stats()
    print(stats)
    assert stats["unavailable"] == 4 and stats["queued"] == 0 and stats["in_flight"] == 0
    row = counter_row(db, project["id"])
    assert row is not None and row["day_used"] == 1 + 4


def test_a_batch_whose_session_the_server_ends_is_sent_again_for_the_others(
    pg_url: str, db: Any, make_project: Any
) -> None:
    """A real ``pg_terminate_backend`` on the connection that will carry the batch (the
    last arrival's): PostgreSQL ended the session, nothing was applied, so the other
    request is sent again on its own connection and admitted; the carrier's request gets
    the 503 whose cause ``run_with_retry`` retries on a fresh connection."""
    blocker = make_project()
    project = make_project()
    adm = admitter(pg_url, admission_statements_max=1)
    key = project["server_key"]

    async def scenario() -> tuple[Answer, Answer]:
        conns = [await aconnect(pg_url) for _ in range(3)]
        holder = await AsyncConnection.connect(pg_url)
        try:
            await adm.admit(conns[0], blocker["server_key"], 1)
            await holder.execute(
                "SELECT 1 FROM gateway.admission_counters WHERE project_id = %s FOR UPDATE",
                [blocker["id"]],
            )
            assert adm.coalescer is not None
            first = asyncio.ensure_future(adm.admit(conns[0], blocker["server_key"], 1))
            await _until(lambda: adm.coalescer.in_flight == 1, "the first statement is sent")
            other = asyncio.ensure_future(_answer(adm, conns[1], key, 1))
            await asyncio.sleep(0)
            carrier = asyncio.ensure_future(_answer(adm, conns[2], key, 1))
            await _until(lambda: adm.coalescer.stats()["queued"] == 2, "both queued")
            await asyncio.to_thread(
                db.execute, "SELECT pg_terminate_backend(%s, 5000)", [conns[2].info.backend_pid]
            )
            await holder.rollback()
            await first
            return await other, await carrier
        finally:
            await holder.close()
            for c in conns:
                await c.close()

    other, carrier = run(scenario())
    print("other:", _code(other), "carrier:", _code(carrier), adm.stats())
    assert isinstance(other, Admission) and other.quota_used == 1
    assert isinstance(carrier, GatewayError) and carrier.status == 503
    assert isinstance(carrier.__cause__, psycopg.OperationalError)
    assert adm.stats()["requeued"] == 1
    row = counter_row(db, project["id"])
    assert row is not None and row["day_used"] == 1


def test_admit_many_answers_like_admit_in_array_order(
    pg_url: str, db: Any, make_project: Any
) -> None:
    """The SQL function alone: one row per element in array order; bad input is an error."""
    project = make_project(rate_limit_per_minute=3)
    from gateway.auth.keys import hash_key

    h = hash_key(project["server_key"])
    rows = db.execute(
        "SELECT outcome, rate_remaining FROM gateway.admit_many(%s, %s, %s, false)",
        [[h, hash_key("nope"), h, h, h], [1, 1, 1, 1, 1], LONG_WINDOW_S],
    ).fetchall()
    assert [(r["outcome"], r["rate_remaining"]) for r in rows] == [
        ("admitted", 2),
        ("invalid_key", None),
        ("admitted", 1),
        ("admitted", 0),
        ("rate_limited", 0),
    ]
    assert db.execute("SELECT count(*) AS n FROM gateway.admit_many('{}', '{}', 60, false)")
    assert db.execute(
        "SELECT count(*) AS n FROM gateway.admit_many('{}', '{}', 60, false)"
    ).fetchone() == {"n": 0}
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT * FROM gateway.admit_many(%s, '{1,2}', 60, false)", [[h]])
