"""Rows that belong to users, through real ``gateway serve`` processes: sessions on the
data routes, owner tables, the owner rules under random sequences, PgBouncer.

Sessions are made in SQL exactly as the auth API stores them (tests/support/owner_rows.py).
The row policies, provisioning and the admitter without HTTP: tests/db/test_owner_rows_db.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.cli import assert_refused, cli_json, run_cli
from tests.support.owner_rows import (
    NOTES_TABLE,
    headers,
    make_session,
    make_user,
    owner_project,
    revoke_sessions,
)
from tests.support.polling import wait_until

BASE = "/v1/inhouse/db"


class Caller:
    """One key, maybe with a session."""

    def __init__(self, client: httpx.Client, key: str, session: str | None = None) -> None:
        self.client, self.key, self.session = client, key, session

    def query(self, **query: Any) -> httpx.Response:
        return self.client.post(
            "/query", json={"query": query}, headers=headers(self.key, self.session)
        )

    def ok(self, **query: Any) -> Any:
        response = self.query(**query)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def error(self, status: int, code: str, **query: Any) -> dict[str, Any]:
        response = self.query(**query)
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error"]["code"] == code, body
        return body

    def notes(self) -> list[dict[str, Any]]:
        rows = self.ok(operation="select", table="notes", sorts=[{"column": "id"}])
        return list(rows)


def test_two_users_never_see_or_change_each_others_rows(
    pg_url: str, make_project: Any, client: httpx.Client
) -> None:
    project = owner_project(make_project)
    pid = project["id"]
    alice_id, bob_id = make_user(pg_url, pid), make_user(pg_url, pid)
    alice = Caller(client, project["public_key"], make_session(pg_url, pid, alice_id))
    bob = Caller(client, project["public_key"], make_session(pg_url, pid, bob_id))
    anonymous = Caller(client, project["public_key"])
    server = Caller(client, project["server_key"])

    # inserts: the owner column is filled with the session's user, or must name it
    a1 = alice.ok(operation="insert", table="notes", data={"body": "a1"})[0]
    assert a1["user_id"] == alice_id
    a2 = alice.ok(operation="insert", table="notes", data={"body": "a2", "user_id": alice_id})[0]
    assert a2["user_id"] == alice_id
    alice.error(
        403, "ROW_OWNER_MISMATCH", operation="insert", table="notes",
        data=[{"body": "x", "user_id": alice_id}, {"body": "forged", "user_id": bob_id}],
    )  # fmt: skip
    b1 = bob.ok(operation="insert", table="notes", data=[{"body": "b1", "user_id": None}])[0]
    assert b1["user_id"] == bob_id

    # reads: each sees their own rows only, whatever the filters say
    assert [r["body"] for r in alice.notes()] == ["a1", "a2"]
    assert [r["body"] for r in bob.notes()] == ["b1"]
    assert alice.ok(
        operation="select", table="notes", filters=[{"column": "id", "op": "eq", "value": b1["id"]}]
    ) == []  # fmt: skip
    assert alice.ok(
        operation="select", table="notes",
        filters=[{"column": "user_id", "op": "eq", "value": bob_id}],
    ) == []  # fmt: skip

    # writes on another user's row change nothing
    by_b1 = [{"column": "id", "op": "eq", "value": b1["id"]}]
    r = alice.query(operation="update", table="notes", set={"body": "hacked"}, filters=by_b1)
    assert r.status_code == 200 and r.json()["count"] == 0
    r = alice.query(operation="delete", table="notes", filters=by_b1)
    assert r.status_code == 200 and r.json()["count"] == 0
    assert [r["body"] for r in bob.notes()] == ["b1"]
    # the owner column can't be changed by a public key
    by_a1 = [{"column": "id", "op": "eq", "value": a1["id"]}]
    alice.error(403, "ROW_OWNER_MISMATCH", operation="update", table="notes",
                set={"user_id": bob_id}, filters=by_a1)  # fmt: skip
    alice.ok(operation="update", table="notes", set={"body": "a1'", "user_id": alice_id},
             filters=by_a1)  # fmt: skip
    # a batch is held to the same rule, statement by statement
    response = client.post(
        "/batch",
        json={"queries": [
            {"operation": "insert", "table": "notes", "data": {"body": "a3"}},
            {"operation": "select", "table": "notes", "columns": ["body"]},
        ]},
        headers=headers(alice.key, alice.session),
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert sorted(r["body"] for r in response.json()["data"][1]["data"]) == ["a1'", "a2", "a3"]

    # a public key without a session can't touch an owner table at all
    anonymous.error(401, "SESSION_REQUIRED", operation="select", table="notes")
    anonymous.error(401, "SESSION_REQUIRED", operation="insert", table="notes", data={"body": "x"})

    # server keys see and write every row, any owner
    assert len(server.notes()) == 4
    s1 = server.ok(operation="insert", table="notes", data={"body": "s", "user_id": bob_id})[0]
    server.ok(operation="update", table="notes", set={"user_id": alice_id},
              filters=[{"column": "id", "op": "eq", "value": s1["id"]}])  # fmt: skip
    assert "s" in [r["body"] for r in alice.notes()]

    # the original's column write rule: client_write=false closes a column to public keys
    alice.error(403, "COLUMN_NOT_WRITABLE", operation="insert", table="notes",
                data={"body": "x", "secret": "s"})  # fmt: skip
    server.ok(operation="insert", table="notes", data={"body": "x", "secret": "s"})

    # /schema shows the rule
    schema = client.get("/schema", headers=headers(alice.key, alice.session)).json()
    notes = next(t for t in schema["tables"] if t["name"] == "notes")
    assert (notes["rowAccess"], notes["ownerColumn"]) == ("owner", "user_id")


def test_session_errors_and_bearer_keys(
    pg_url: str, make_project: Any, client: httpx.Client
) -> None:
    project = owner_project(make_project)
    pid = project["id"]
    user = make_user(pg_url, pid)
    select = {"query": {"operation": "select", "table": "notes"}}

    def call(hdrs: dict[str, str]) -> httpx.Response:
        return client.post("/query", json=select, headers=hdrs)

    def code(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, response.json()["error"]["code"]

    key = project["public_key"]
    assert code(call(headers(key, "no-such-session"))) == (401, "SESSION_NOT_FOUND")
    expired = make_session(pg_url, pid, user, ttl_s=-5)
    assert code(call(headers(key, expired))) == (401, "SESSION_EXPIRED")
    good = make_session(pg_url, pid, user)
    assert call(headers(key, good)).status_code == 200
    # a session of another project is not found here
    other = make_project()
    assert code(call(headers(other["public_key"], good))) == (401, "SESSION_NOT_FOUND")
    # unicode and oversized Bearer values are refused cleanly
    latin1 = ("Bearer " + "é" * 600).encode("latin-1")
    assert code(call({"x-api-key": key, "Authorization": latin1})) == (  # type: ignore[dict-item]
        401,
        "SESSION_NOT_FOUND",
    )
    # a Bearer value starting with sheen_ is a key, as before sessions existed
    ok = client.post(
        "/query",
        json={"query": {"operation": "select", "table": "todos_absent"}},
        headers={"Authorization": f"Bearer {project['server_key']}"},
    )
    assert ok.json()["error"]["code"] == "TABLE_NOT_FOUND"
    # a session without a key is still a missing key
    assert code(call({"Authorization": f"Bearer {good}"})) == (401, "INVALID_API_KEY")
    revoke_sessions(pg_url, user)
    assert code(call(headers(key, good))) == (401, "SESSION_NOT_FOUND")
    # last_used_at is written by admission
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM gateway.auth_sessions WHERE user_id = %s "
            "AND last_used_at IS NOT NULL",
            [user],
        ).fetchone()
    assert row is not None and row[0] >= 1


def test_public_read_and_cli(
    pg_url: str, make_project: Any, client: httpx.Client, tmp_path: Path
) -> None:
    project = make_project()
    pid = project["id"]
    definition = {**NOTES_TABLE, "row_access": "all"}
    path = tmp_path / "notes.json"
    path.write_text(json.dumps(definition))
    created = cli_json(pg_url, "table", "create", pid, "--file", str(path))
    assert created["table"] == "notes"
    alice, bob = make_user(pg_url, pid), make_user(pg_url, pid)
    a = Caller(client, project["public_key"], make_session(pg_url, pid, alice))
    b = Caller(client, project["public_key"], make_session(pg_url, pid, bob))
    anonymous = Caller(client, project["public_key"])
    anonymous.ok(operation="insert", table="notes", data={"body": "free", "user_id": bob})

    # refused settings: a non-uuid owner column, owner access without an owner column
    assert_refused(
        run_cli(pg_url, "table", "set-access", pid, "notes", "--owner-column", "body"),
        "must be of type uuid",
    )
    assert_refused(
        run_cli(pg_url, "table", "set-access", pid, "todos", "--row-access", "owner"),
        "needs an owner_column",
    )
    out = cli_json(pg_url, "table", "set-access", pid, "notes", "--row-access", "public_read")
    assert (out["row_access"], out["owner_column"]) == ("public_read", "user_id")

    def settled() -> bool:
        r = anonymous.query(operation="insert", table="notes", data={"body": "x"})
        return r.status_code == 401

    _eventually(settled)
    anonymous.error(401, "SESSION_REQUIRED", operation="insert", table="notes", data={"body": "x"})
    a.ok(operation="insert", table="notes", data={"body": "mine"})
    # everyone reads every row; writes stay with their owner
    assert len(anonymous.notes()) == 2 and len(b.notes()) == 2
    r = a.query(operation="delete", table="notes",
                filters=[{"column": "body", "op": "eq", "value": "free"}])  # fmt: skip
    assert r.json()["count"] == 0
    r = b.query(operation="delete", table="notes",
                filters=[{"column": "body", "op": "eq", "value": "free"}])  # fmt: skip
    assert r.json()["count"] == 1

    # owner: reads are held too; back to all: as before
    cli_json(pg_url, "table", "set-access", pid, "notes", "--row-access", "owner")
    _eventually(lambda: anonymous.query(operation="select", table="notes").status_code == 401)
    assert [r["body"] for r in a.notes()] == ["mine"] and b.notes() == []
    cli_json(pg_url, "table", "set-access", pid, "notes", "--row-access", "all")
    _eventually(lambda: anonymous.query(operation="select", table="notes").status_code == 200)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass",
            [f"{project['schema_name']}.notes"],
        ).fetchone()
    assert row == (False,)


def _eventually(check: Any, timeout: float = 5.0) -> None:
    wait_until(check, timeout=timeout, message="the registry change reaching the instance")


# --- a hypothesis test over the owner rules ----------------------------------------------

ACTORS = ("alice", "bob", "server")
action = st.tuples(
    st.sampled_from(ACTORS),
    st.sampled_from(("insert", "insert_as_other", "update", "delete", "hand_over", "select")),
    st.integers(min_value=0, max_value=5),  # which existing row (by position)
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=st.lists(action, min_size=1, max_size=12))
def test_owner_rules_hold_for_any_sequence(
    pg_url: str, make_project: Any, client: httpx.Client, actions: list[tuple[str, str, int]]
) -> None:
    """Random operations by two users and a server key against a model: every answer and
    every user's view match it; nobody ever sees or changes another user's row."""
    project = owner_project(make_project)
    pid = project["id"]
    users = {name: make_user(pg_url, pid) for name in ("alice", "bob")}
    callers = {
        name: Caller(client, project["public_key"], make_session(pg_url, pid, uid))
        for name, uid in users.items()
    }
    callers["server"] = Caller(client, project["server_key"])
    model: dict[int, str] = {}  # row id -> owner user id
    other = {"alice": "bob", "bob": "alice", "server": "alice"}

    for actor, op, pick in actions:
        caller = callers[actor]
        me = users.get(actor)
        ids = sorted(model)
        target = ids[pick % len(ids)] if ids else 0
        by_id = [{"column": "id", "op": "eq", "value": target}]
        if op == "insert":
            owner = me or users["bob"]
            row = caller.ok(operation="insert", table="notes", data={"body": op, "user_id": owner})
            model[row[0]["id"]] = owner
        elif op == "insert_as_other":
            r = caller.query(operation="insert", table="notes",
                             data={"body": op, "user_id": users[other[actor]]})  # fmt: skip
            if me is None:
                assert r.status_code == 200
                model[r.json()["data"][0]["id"]] = users[other[actor]]
            else:
                assert r.json()["error"]["code"] == "ROW_OWNER_MISMATCH"
        elif op in ("update", "delete"):
            q: dict[str, Any] = {"operation": op, "table": "notes", "filters": by_id}
            if op == "update":
                q["set"] = {"body": "changed"}
            r = caller.query(**q)
            assert r.status_code == 200, r.text
            allowed = target in model and (me is None or model[target] == me)
            assert r.json()["count"] == (1 if allowed else 0)
            if allowed and op == "delete":
                del model[target]
        elif op == "hand_over":
            new_owner = users[other[actor]]
            r = caller.query(operation="update", table="notes", set={"user_id": new_owner},
                             filters=by_id)  # fmt: skip
            if me is None:
                assert r.status_code == 200
                if target in model:
                    model[target] = new_owner
            else:
                assert r.json()["error"]["code"] == "ROW_OWNER_MISMATCH"
        # after every step, each view is exactly what the model says
        for name, uid in users.items():
            seen = {row["id"]: row["user_id"] for row in callers[name].notes()}
            assert seen == {i: o for i, o in model.items() if o == uid}
        assert {row["id"] for row in callers["server"].notes()} == set(model)


# --- sessions across instances -----------------------------------------------------------


def test_sign_out_on_one_instance_is_seen_by_the_next_request_everywhere(
    pg_url: str, make_project: Any, gateway_cluster: Any
) -> None:
    """Sign up on one instance, use the session on another, sign out on a third: the next
    data request on every instance answers 401. Then ``gateway auth logout`` (every
    session of the user) likewise."""
    cluster = gateway_cluster(3)
    project = owner_project(make_project)
    pid, key = project["id"], project["public_key"]
    select = {"query": {"operation": "select", "table": "notes"}}
    insert = {"query": {"operation": "insert", "table": "notes", "data": {"body": "n"}}}
    first, second, third = cluster.urls
    with httpx.Client(timeout=30) as http:
        signed_up = http.post(
            first + "/v1/inhouse/auth/sign-up",
            json={"email": f"u-{uuid.uuid4().hex[:8]}@example.com", "password": "long enough"},
            headers={"x-api-key": key},
        )
        assert signed_up.status_code == 200, signed_up.text
        token = signed_up.json()["data"]["session"]["token"]
        user = signed_up.json()["data"]["user"]["id"]
        hdrs = headers(key, token)
        row = http.post(second + BASE + "/query", json=insert, headers=hdrs)
        assert row.status_code == 200 and row.json()["data"][0]["user_id"] == user
        # the session works on every instance (each one's admission resolves it)
        for url in cluster.urls:
            r = http.post(url + BASE + "/query", json=select, headers=hdrs)
            assert r.status_code == 200 and len(r.json()["data"]) == 1
        signed_out = http.post(third + "/v1/inhouse/auth/sign-out", headers=hdrs, json={})
        assert signed_out.status_code == 200, signed_out.text
        for url in cluster.urls:
            r = http.post(url + BASE + "/query", json=select, headers=hdrs)
            assert r.status_code == 401 and r.json()["error"]["code"] == "SESSION_NOT_FOUND"
        # a fresh session works at once, and `gateway auth logout` ends it everywhere
        token2 = make_session(pg_url, pid, user)
        hdrs2 = headers(key, token2)
        for url in cluster.urls:
            assert http.post(url + BASE + "/query", json=select, headers=hdrs2).status_code == 200
        logout = run_cli(pg_url, "auth", "logout", pid, user)
        assert logout.returncode == 0, logout.stderr
        for url in cluster.urls:
            r = http.post(url + BASE + "/query", json=select, headers=hdrs2)
            assert r.status_code == 401 and r.json()["error"]["code"] == "SESSION_NOT_FOUND"


def test_sessions_and_row_policies_through_pgbouncer(
    pg_url: str, make_project: Any, gateway_cluster: Any, request: pytest.FixtureRequest
) -> None:
    """Transaction pooling: the 6-argument admission runs unprepared, and the row
    policies' settings are transaction-local, so no user leaks into another's statement
    on a shared server connection."""
    bouncer = request.getfixturevalue("pgbouncer")
    cluster = gateway_cluster(
        1,
        env={"DATABASE_URL": bouncer.url, "GATEWAY_DB_POOLER": "transaction"},
        direct_url=pg_url,
    )
    project = owner_project(make_project)
    pid = project["id"]
    callers = []
    with httpx.Client(base_url=cluster.urls[0] + BASE, timeout=30) as client:
        for i in range(3):
            uid = make_user(pg_url, pid)
            caller = Caller(client, project["public_key"], make_session(pg_url, pid, uid))
            caller.ok(operation="insert", table="notes", data=[{"body": f"u{i}"}] * (i + 1))
            callers.append((uid, caller))
        for _ in range(3):
            for i, (uid, caller) in enumerate(callers):
                rows = caller.notes()
                assert len(rows) == i + 1 and {r["user_id"] for r in rows} == {uid}
        anonymous = Caller(client, project["public_key"])
        anonymous.error(401, "SESSION_REQUIRED", operation="select", table="notes")
