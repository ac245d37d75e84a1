"""The admin API through real ``gateway serve`` processes with signed requests.

Two instances share the test database: every route is exercised, a request replayed at
the other instance is refused, signature faults are indistinguishable 401s, the CLI and
the API see each other's work, and changes made through the API reach every instance.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from openapi_spec_validator import validate

from gateway.control.signing import sign_request
from tests.support.admin_client import OTHER_SECRET, SECRET, AdminClient
from tests.support.cli import cli_json
from tests.support.harness import ClusterStarter, GatewayCluster
from tests.support.polling import eventually, wait_until
from tests.support.tables import TODOS_TABLE

DATA = "/v1/inhouse/db"
PROPAGATION_BOUND_S = 1.0


@pytest.fixture(scope="module")
def cluster(module_cluster: ClusterStarter) -> GatewayCluster:
    return module_cluster(
        2, env={"GATEWAY_ADMIN_HMAC_SECRET": f"{SECRET},{OTHER_SECRET}"}, name="admin"
    )


@pytest.fixture
def a(cluster: GatewayCluster) -> Iterator[AdminClient]:
    client = AdminClient(cluster.urls[0])
    yield client
    client.close()


@pytest.fixture
def b(cluster: GatewayCluster) -> Iterator[AdminClient]:
    client = AdminClient(cluster.urls[1])
    yield client
    client.close()


def unique(prefix: str = "adm") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def data_query(url: str, key: str, **query: Any) -> httpx.Response:
    return httpx.post(
        url + DATA + "/query", json={"query": query}, headers={"x-api-key": key}, timeout=10
    )


def schema(url: str, key: str) -> httpx.Response:
    return httpx.get(url + DATA + "/schema", headers={"x-api-key": key}, timeout=10)


def new_project(a: AdminClient, *, table: bool = True) -> dict[str, Any]:
    project = a.ok("POST", "/projects", {"name": unique()}, status=201)
    if table:
        a.ok("POST", f"/projects/{project['name']}/tables", TODOS_TABLE, status=201)
    return project


# --- every route ---------------------------------------------------------------------------


def test_projects_routes(a: AdminClient, b: AdminClient, db: psycopg.Connection[Any]) -> None:
    name = unique()
    created = a.ok(
        "POST", "/projects", {"name": name, "tier": "starter", "rate_limit_per_minute": 7}, 201
    )
    assert created["name"] == name and created["tier"] == "starter"
    # the limit given is an override; the day's quota comes from the starter plan (0010)
    assert created["rate_limit_per_minute"] == 7 and created["requests_limit_daily"] == 100_000
    assert created["schema_name"].startswith("p_")

    # get by name and by id, on the other instance
    by_name = b.ok("GET", f"/projects/{name}")
    by_id = b.ok("GET", f"/projects/{created['id']}")
    assert by_name == by_id and by_name["tables"] == [] and by_name["active_keys"] == 0

    # paging: walk every page, find ours exactly once; hasMore/total are consistent
    seen: list[str] = []
    offset = 0
    while True:
        page = a.ok("GET", f"/projects?offset={offset}&limit=7")  # unsorted query: canonical
        assert page["limit"] == 7 and len(page["projects"]) <= 7
        seen += [p["name"] for p in page["projects"]]
        offset += len(page["projects"])
        if not page["hasMore"]:
            break
    assert seen.count(name) == 1 and len(seen) == page["total"]

    updated = b.ok(
        "PATCH",
        f"/projects/{name}",
        {"rate_limit_per_minute": 50, "requests_per_day": 900, "tier": "growth"},
    )
    assert (updated["rate_limit_per_minute"], updated["requests_limit_daily"]) == (50, 900)
    assert updated["tier"] == "growth" and updated["status"] == "active"
    assert a.ok("PATCH", f"/projects/{name}", {"status": "suspended"})["status"] == "suspended"

    nothing = a.call("PATCH", f"/projects/{name}", {})
    assert nothing.status_code == 400 and "nothing to change" in nothing.json()["error"]["message"]

    # delete: refused without the right confirmation, then everything is gone
    a.ok("POST", f"/projects/{name}/tables", TODOS_TABLE, 201)
    wrong = a.call("DELETE", f"/projects/{name}", {"confirm": "not-it"})
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "confirm"
    missing = a.call("DELETE", f"/projects/{name}")
    assert missing.status_code == 400
    deleted = a.ok("DELETE", f"/projects/{name}", {"confirm": name})
    assert deleted == {"id": created["id"], "name": name, "deleted": True}
    assert (
        db.execute("SELECT 1 FROM gateway.projects WHERE id = %s", [created["id"]]).fetchone()
        is None
    )
    schema_name = created["schema_name"]
    assert (
        db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema_name]).fetchone()
        is None
    )
    assert db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [schema_name]).fetchone() is None
    gone = b.call("GET", f"/projects/{name}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "NOT_FOUND"

    taken = a.call("POST", "/projects", {"name": "dup-" + name})
    assert taken.status_code == 201
    again = b.call("POST", "/projects", {"name": "dup-" + name})
    assert again.status_code == 409 and again.json()["error"] == {
        "code": "CONFLICT",
        "message": f"a project named {'dup-' + name!r} already exists",
        "field": "name",
    }


def test_keys_routes(a: AdminClient, b: AdminClient, cluster: GatewayCluster) -> None:
    project = new_project(a)
    p = f"/projects/{project['name']}"
    server = a.ok("POST", p + "/keys", {"type": "server"}, 201)
    public = b.ok(
        "POST", p + "/keys", {"type": "public", "scopes": ["read"], "expires_in": 3600}, 201
    )
    assert server["key"].startswith("sheen_sk_") and public["key"].startswith("sheen_pk_")
    assert public["scopes"] == ["read"] and public["expires_at"] is not None
    for url in cluster.urls:
        assert data_query(url, server["key"], operation="select", table="todos").status_code == 200

    listed = a.ok("GET", p + "/keys")["keys"]
    assert [k["id"] for k in listed] == [server["id"], public["id"]]
    text = orjson.dumps(listed).decode()
    assert server["key"] not in text and public["key"] not in text  # never the secrets
    assert all("key" not in k and k["status"] == "active" for k in listed)

    # regenerate: the old key stops working, the new one works, everywhere, at once
    new = b.ok("POST", f"{p}/keys/{server['id']}/regenerate", None, 201)
    assert new["replaces"] == server["id"] and new["key"] != server["key"]
    assert new["type"] == "server" and new["scopes"] == server["scopes"]
    for url in cluster.urls:
        old = data_query(url, server["key"], operation="select", table="todos")
        assert old.status_code == 401, old.text
        assert data_query(url, new["key"], operation="select", table="todos").status_code == 200
    again = a.call("POST", f"{p}/keys/{server['id']}/regenerate")
    assert again.status_code == 409

    revoked = a.ok("POST", f"{p}/keys/{new['id']}/revoke")
    assert revoked == {"id": new["id"], "status": "revoked"}
    for url in cluster.urls:
        assert data_query(url, new["key"], operation="select", table="todos").status_code == 401
    statuses = {k["id"]: k["status"] for k in b.ok("GET", p + "/keys")["keys"]}
    assert statuses == {server["id"]: "revoked", public["id"]: "active", new["id"]: "revoked"}

    # a key of another project is not found through this project
    other = new_project(a, table=False)
    foreign = a.call("POST", f"/projects/{other['name']}/keys/{public['id']}/revoke")
    assert foreign.status_code == 404
    bad_id = a.call("POST", f"{p}/keys/not-a-uuid/revoke")
    assert bad_id.status_code == 400 and bad_id.json()["error"]["field"] == "key_id"


def test_tables_routes(a: AdminClient, b: AdminClient, cluster: GatewayCluster) -> None:
    project = new_project(a, table=False)
    p = f"/projects/{project['name']}"
    created = a.ok("POST", p + "/tables", TODOS_TABLE, 201)
    assert created["table"] == "todos" and "title" in created["columns"]
    key = a.ok("POST", p + "/keys", {"type": "public"}, 201)["key"]
    server_key = a.ok("POST", p + "/keys", {"type": "server"}, 201)["key"]

    column = b.ok(
        "POST",
        p + "/tables/todos/columns",
        {"name": "priority", "type": "int", "nullable": True},
        201,
    )
    assert column["column"]["type"] == "integer"

    def accepts_priority(url: str) -> bool:
        r = data_query(url, server_key, operation="select", table="todos", columns=["priority"])
        return r.status_code == 200

    assert all(
        eventually(lambda u=u: accepts_priority(u), timeout=PROPAGATION_BOUND_S, interval=0.01)
        for u in cluster.urls
    )

    access = a.ok("PATCH", p + "/tables/todos/access", {"client_write": False})
    assert access["client_write"] is False and access["client_read"] is True
    col = a.ok("PATCH", p + "/tables/todos/access", {"column": "title", "sensitive": True})
    assert col["sensitive"] is True and col["column"] == "title"

    realtime = b.ok("PUT", p + "/tables/todos/realtime", {"enabled": False})
    assert realtime["realtime"] is False
    tables = a.ok("GET", p + "/tables")["tables"]
    assert [t["name"] for t in tables] == ["todos"]
    todos = tables[0]
    assert todos["realtime"] is False and todos["client_write"] is False
    title = next(c for c in todos["columns"] if c["name"] == "title")
    assert title["sensitive"] is True
    assert b.ok("PUT", p + "/tables/todos/realtime", {"enabled": True})["realtime"] is True

    # a public key sees the write refusal at every instance
    def write_refused(url: str) -> bool:
        r = data_query(url, key, operation="insert", table="todos", data={"title": "x"})
        return r.status_code == 403

    assert all(
        eventually(lambda u=u: write_refused(u), timeout=PROPAGATION_BOUND_S, interval=0.01)
        for u in cluster.urls
    )

    dropped = a.ok("DELETE", p + "/tables/todos")
    assert dropped["dropped"] is True
    missing = b.call("DELETE", p + "/tables/todos")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    assert a.ok("GET", p + "/tables")["tables"] == []


def test_definition_errors_name_the_field(a: AdminClient) -> None:
    project = new_project(a, table=False)
    p = f"/projects/{project['name']}"
    bad_type = {"name": "t", "columns": [{"name": "id", "type": "money", "primary_key": True}]}
    r = a.call("POST", p + "/tables", bad_type)
    assert r.status_code == 400
    assert "type 'money' is not allowed" in r.json()["error"]["message"]
    no_pk = {"name": "t", "columns": [{"name": "id", "type": "text"}]}
    r = a.call("POST", p + "/tables", no_pk)
    assert r.status_code == 400 and "primary key" in r.json()["error"]["message"]
    r = a.call("POST", p + "/tables", {"name": "t", "columns": [{"name": "id", "type": 5}]})
    assert r.status_code == 400 and r.json()["error"]["field"] == "columns[0].type"
    r = a.call("POST", "/projects", {"name": "x", "rate_limit_per_minute": "100"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "rate_limit_per_minute"


# --- authentication ----------------------------------------------------------------------


def test_replay_at_another_instance_is_refused(a: AdminClient, cluster: GatewayCluster) -> None:
    url, headers, body = a.signed("POST", "/projects", {"name": unique("replay")})
    first = a.send("POST", url, headers, body)
    assert first.status_code == 201, first.text
    other_url = url.replace(cluster.urls[0], cluster.urls[1])
    replayed = a.send("POST", other_url, headers, body)
    assert replayed.status_code == 401
    assert a.send("POST", url, headers, body).status_code == 401  # and at the same one

    # a GET too, first at the second instance
    url, headers, body = a.signed("GET", "/projects?limit=1")
    assert (
        a.send("GET", url.replace(cluster.urls[0], cluster.urls[1]), headers, body).status_code
        == 200
    )
    assert a.send("GET", url, headers, body).status_code == 401


def test_signature_faults_are_one_indistinguishable_401(a: AdminClient) -> None:
    path = "/projects"
    body = orjson.dumps({"name": unique("sig")})
    url = a.base_url + "/v1/admin" + path

    def fresh(**changes: Any) -> dict[str, str]:
        headers = sign_request(SECRET, "POST", "/v1/admin" + path, body)
        headers.update(changes)
        return {k: v for k, v in headers.items() if v is not None}

    good = fresh()
    flipped = good["x-sheen-sig-v2"][:-1] + ("0" if good["x-sheen-sig-v2"][-1] != "0" else "1")
    old = int(time.time()) - 600
    cases = {
        "bad signature": fresh(**{"x-sheen-sig-v2": flipped}),
        "upper-case hex": fresh(**{"x-sheen-sig-v2": good["x-sheen-sig-v2"].upper()}),
        "old timestamp": sign_request(SECRET, "POST", "/v1/admin" + path, body, timestamp=old),
        "future timestamp": sign_request(
            SECRET, "POST", "/v1/admin" + path, body, timestamp=int(time.time()) + 600
        ),
        "timestamp changed after signing": fresh(
            **{"x-sheen-timestamp": str(int(time.time()) - 1)}
        ),
        "no signature": fresh(**{"x-sheen-sig-v2": None}),
        "no timestamp": fresh(**{"x-sheen-timestamp": None}),
        "no nonce": fresh(**{"x-sheen-nonce": None}),
        "no headers at all": {},
        "wrong secret": sign_request(
            "an-entirely-wrong-secret-value", "POST", "/v1/admin" + path, body
        ),
        "other method signed": sign_request(SECRET, "PUT", "/v1/admin" + path, body),
        "other body signed": sign_request(SECRET, "POST", "/v1/admin" + path, body + b" "),
        "malformed timestamp": fresh(**{"x-sheen-timestamp": "soon"}),
        "short nonce": fresh(**{"x-sheen-nonce": "abc"}),
    }
    answers = set()
    for what, headers in cases.items():
        response = httpx.post(
            url, content=body, headers={**headers, "content-type": "application/json"}, timeout=10
        )
        assert response.status_code == 401, (what, response.text)
        answers.add(response.content)
    assert len(answers) == 1  # nothing tells which part failed
    (answer,) = answers
    assert orjson.loads(answer) == {
        "ok": False,
        "error": {
            "code": "UNAUTHORIZED",
            "message": "the request's signature is missing or not valid",
        },
    }
    # nothing was created by any of them; the good one still works (its nonce is unused)
    ok = httpx.post(url, content=body, headers={**good, "content-type": "application/json"})
    assert ok.status_code == 201, ok.text


def test_every_admin_route_needs_a_signature(a: AdminClient) -> None:
    from gateway.control.admin import ROUTES
    from gateway.control.admin_route import PREFIX

    for route in ROUTES:
        ids = {name: str(uuid.uuid4()) for name in ("key_id", "user_id", "job_id")}
        path = PREFIX + route.path.format(project="x", table="t", **ids)
        response = httpx.request(route.method, a.base_url + path, content=b"{}", timeout=10)
        assert response.status_code == 401, (route.method, path, response.text)


def test_rotated_secret_is_accepted(cluster: GatewayCluster) -> None:
    rotated = AdminClient(cluster.urls[1], secret=OTHER_SECRET)
    try:
        assert rotated.call("GET", "/projects?limit=1").status_code == 200
    finally:
        rotated.close()


def test_without_a_secret_the_admin_api_is_404(pg_url: str, gateway_cluster: Any) -> None:
    cluster = gateway_cluster(1, env={"GATEWAY_ADMIN_HMAC_SECRET": ""})
    client = AdminClient(cluster.urls[0])
    try:
        for path in ("/projects", "/openapi.json"):
            assert client.call("GET", path).status_code == 404
        assert client.call("POST", "/projects", {"name": unique()}).status_code == 404
    finally:
        client.close()
    cluster.stop()
    assert "admin API off: GATEWAY_ADMIN_HMAC_SECRET is not set" in cluster.output()


# --- one implementation, two faces ------------------------------------------------------------


def test_cli_and_api_see_each_others_work(pg_url: str, a: AdminClient, b: AdminClient) -> None:
    name = unique("cli")
    made = cli_json(pg_url, "project", "create", name, "--tier", "scale")
    through_api = b.ok("GET", f"/projects/{name}")
    assert through_api["id"] == made["id"] and through_api["tier"] == "scale"
    cli_key = cli_json(pg_url, "key", "create", name, "--type", "server")
    assert [k["id"] for k in a.ok("GET", f"/projects/{name}/keys")["keys"]] == [cli_key["id"]]

    api_name = unique("api")
    made = a.ok("POST", "/projects", {"name": api_name, "requests_per_day": 77}, 201)
    a.ok("POST", f"/projects/{api_name}/tables", TODOS_TABLE, 201)
    key = a.ok("POST", f"/projects/{api_name}/keys", {"type": "public"}, 201)
    through_cli = cli_json(pg_url, "project", "get", api_name)
    assert through_cli["id"] == made["id"] and through_cli["requests_limit_daily"] == 77
    assert through_cli["tables"] == ["todos"]
    listed = cli_json(pg_url, "project", "list", "--limit", "100")
    assert listed["total"] >= 2
    keys = cli_json(pg_url, "key", "list", api_name)["keys"]
    assert [k["id"] for k in keys] == [key["id"]] and "key" not in keys[0]
    regenerated = cli_json(pg_url, "key", "regenerate", key["id"])
    statuses = {k["id"]: k["status"] for k in a.ok("GET", f"/projects/{api_name}/keys")["keys"]}
    assert statuses == {key["id"]: "revoked", regenerated["id"]: "active"}
    cli_json(pg_url, "project", "set-limits", api_name, "--tier", "growth")
    assert b.ok("GET", f"/projects/{api_name}")["tier"] == "growth"
    cli_json(pg_url, "project", "delete", api_name, "--confirm", api_name)
    assert a.call("GET", f"/projects/{api_name}").status_code == 404


def test_admin_sign_cli_output_is_curl_able(pg_url: str, a: AdminClient) -> None:
    import os
    import shlex
    import subprocess
    import sys

    env = {**os.environ, "GATEWAY_ADMIN_HMAC_SECRET": SECRET}
    body = orjson.dumps({"name": unique("curl")}).decode()
    command = ["admin", "sign", "post", "/v1/admin/projects", "--body", body]
    out = subprocess.run(
        [sys.executable, "-m", "gateway", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    words = shlex.split(out)
    assert words[::2] == ["-H", "-H", "-H"]
    headers = dict(w.split(":", 1) for w in words[1::2])
    response = httpx.post(
        a.base_url + "/v1/admin/projects",
        content=body,
        headers={**headers, "content-type": "application/json"},
    )
    assert response.status_code == 201, response.text


# --- changes reach every instance on the next request -------------------------------------


def test_api_changes_take_effect_on_every_instance(
    a: AdminClient, b: AdminClient, cluster: GatewayCluster
) -> None:
    project = new_project(a)
    p = f"/projects/{project['name']}"
    public = a.ok("POST", p + "/keys", {"type": "public"}, 201)["key"]
    server = a.ok("POST", p + "/keys", {"type": "server"}, 201)["key"]
    for url in cluster.urls:  # warm every instance's caches
        assert schema(url, public).status_code == 200
        assert data_query(url, server, operation="select", table="todos").status_code == 200

    def public_columns(url: str) -> set[str]:
        return {c["name"] for c in schema(url, public).json()["tables"][0]["columns"]}

    # a column made sensitive disappears for public keys everywhere
    assert all("title" in public_columns(u) for u in cluster.urls)
    a.ok("PATCH", p + "/tables/todos/access", {"column": "title", "sensitive": True})
    for url in cluster.urls:
        assert eventually(
            lambda u=url: "title" not in public_columns(u),
            timeout=PROPAGATION_BOUND_S,
            interval=0.01,
        ), url

    # a suspension is refused on the very next request at the other instance
    b.ok("PATCH", p, {"status": "suspended"})
    for url in cluster.urls:
        r = data_query(url, server, operation="select", table="todos")
        assert r.status_code == 403 and r.json()["error"]["code"] == "PROJECT_SUSPENDED"
    a.ok("PATCH", p, {"status": "active"})
    for url in cluster.urls:
        assert data_query(url, server, operation="select", table="todos").status_code == 200

    # a lower rate limit applies at once on every instance
    a.ok("PATCH", p, {"rate_limit_per_minute": 0})
    for url in cluster.urls:
        r = data_query(url, server, operation="select", table="todos")
        assert r.status_code == 429, r.text

    # a deleted project's keys stop working everywhere
    b.ok("DELETE", p, {"confirm": project["name"]})
    for url in cluster.urls:
        assert data_query(url, public, operation="select", table="todos").status_code == 401


# --- malformed input: 4xx, never 5xx ---------------------------------------------------------


def test_malformed_admin_bodies_get_4xx(a: AdminClient) -> None:
    project = new_project(a)
    p = f"/projects/{project['name']}"
    T, C = p + "/tables", p + "/tables/todos/columns"

    def col(name: str, type_: str, **flags: Any) -> dict[str, Any]:
        return {"name": name, "type": type_, **flags}

    def tdef(*columns: Any, name: str = "t") -> dict[str, Any]:
        return {"name": name, "columns": list(columns)}

    bodies: list[tuple[str, str, Any]] = [
        ("POST", "/projects", b""),
        ("POST", "/projects", b"not json"),
        ("POST", "/projects", b"[]"),
        ("POST", "/projects", b"null"),
        ("POST", "/projects", b'"name"'),
        ("POST", "/projects", b"{\"name\": \"a\""),
        ("POST", "/projects", {}),
        ("POST", "/projects", {"name": ""}),
        ("POST", "/projects", {"name": "bad name!"}),
        ("POST", "/projects", {"name": "x" * 500}),
        ("POST", "/projects", {"name": 5}),
        ("POST", "/projects", {"name": unique(), "tier": "platinum"}),
        ("POST", "/projects", {"name": unique(), "rate_limit_per_minute": -1}),
        ("POST", "/projects", {"name": unique(), "rate_limit_per_minute": 2**40}),
        ("POST", "/projects", {"name": unique(), "requests_per_day": 1.5}),
        ("POST", "/projects", {"name": unique(), "extra": True}),
        ("POST", "/projects", {"name": "\u0000"}),
        ("POST", "/projects", b'{"name": "\\ud800"}'),
        ("PATCH", p, {"status": "deleted"}),
        ("PATCH", p, {"tier": None, "status": None}),
        ("PATCH", p, {"rate_limit_per_minute": True}),
        ("PATCH", p, [1, 2]),
        ("DELETE", p, {"confirm": 5}),
        ("DELETE", p, {"confirm": "x" * 1000}),
        ("POST", p + "/keys", {}),
        ("POST", p + "/keys", {"type": "admin"}),
        ("POST", p + "/keys", {"type": "server", "scopes": []}),
        ("POST", p + "/keys", {"type": "server", "scopes": ["delete"]}),
        ("POST", p + "/keys", {"type": "server", "scopes": "read"}),
        ("POST", p + "/keys", {"type": "server", "expires_in": 0}),
        ("POST", p + "/keys", {"type": "server", "expires_in": 10**12}),
        ("POST", p + "/keys/00000000-0000-0000-0000-000000000000/revoke", {"x": 1}),
        ("POST", p + "/tables", {"name": "t"}),
        ("POST", p + "/tables", {"name": "t", "columns": []}),
        ("POST", T, tdef(col("id", "text", primary_key=True), name="T!")),
        ("POST", T, tdef(col("id", "bigint"))),
        ("POST", T, tdef({"name": "id"})),
        ("POST", T, tdef(col("id", "x" * 50, primary_key=True))),
        ("POST", T, tdef(col("id", "text; drop table x", primary_key=True))),
        ("POST", T, tdef(col("id", "bigint", primary_key=True, default="abc"))),
        ("POST", T, tdef(col("id", "bigint", primary_key=True, identity=True, default=1))),
        ("POST", T, tdef(col("id", "text", primary_key=True, identity=True))),
        ("POST", T, tdef(col("id", "text", primary_key=True), col("id", "text"))),
        ("POST", T, tdef(col("xmin", "text", primary_key=True))),
        ("POST", T, tdef(col("id", "date", primary_key=True, default="gen_random_uuid()"))),
        ("POST", T, tdef(col("id", "integer", primary_key=True, default={"a": 1}))),
        ("POST", T, tdef(col("id", "text", primary_key=True), name="todos")),
        ("POST", T, tdef(*(col(f"c{i}", "text") for i in range(201)))),
        ("POST", C, col("id2", "bigint", primary_key=True)),
        ("POST", p + "/tables/todos/columns", {"name": "title", "type": "text"}),
        ("POST", p + "/tables/todos/columns", {"name": "n", "type": "integer", "identity": True}),
        ("POST", p + "/tables/todos/columns", {"name": "n", "type": "integer", "default": "now()"}),
        ("POST", p + "/tables/nope/columns", {"name": "n", "type": "integer"}),
        ("POST", p + "/tables/Bad-Name/columns", {"name": "n", "type": "integer"}),
        ("PATCH", p + "/tables/todos/access", {}),
        ("PATCH", p + "/tables/todos/access", {"sensitive": True}),
        ("PATCH", p + "/tables/todos/access", {"column": "nope", "client_read": False}),
        ("PATCH", p + "/tables/todos/access", {"client_read": "false"}),
        ("PUT", p + "/tables/todos/realtime", {}),
        ("PUT", p + "/tables/todos/realtime", {"enabled": "on"}),
        ("PUT", p + "/tables/nope/realtime", {"enabled": True}),
        ("GET", "/projects?limit=0", None),
        ("GET", "/projects?limit=abc", None),
        ("GET", "/projects?offset=-1", None),
        ("GET", "/projects?unknown=1", None),
        ("GET", "/projects/nope-" + uuid.uuid4().hex, None),
        ("GET", "/projects", b"x" * (256 * 1024 + 1)),
        # limits: any existing plan, every override in range
        ("PATCH", p, {"tier": "no-such-plan"}),
        ("PATCH", p, {"tier": "Bad Plan!"}),
        ("PATCH", p, {"tier": 5}),
        ("PATCH", p, {"plan": "free"}),
        ("PATCH", p, {"rate_limit_per_minute": -1}),
        ("PATCH", p, {"job_runs_monthly": -2}),
        ("PATCH", p, {"realtime_streams": 2**40}),
        ("PATCH", p, {"db_size_bytes": 2**63}),
        ("PATCH", p, {"bandwidth_bytes_monthly": "10GB"}),
        ("PATCH", p, {"requests_per_day": 1.5}),
        ("POST", "/projects", {"name": unique(), "tier": "no-such-plan"}),
        # auth users
        ("GET", p + "/users?limit=0", None),
        ("GET", p + "/users?limit=101", None),
        ("GET", p + "/users?offset=-1", None),
        ("GET", p + "/users?page=2", None),
        ("GET", p + "/users", {"x": 1}),
        ("GET", "/projects/nope-" + uuid.uuid4().hex + "/users", None),
        ("POST", p + "/users/not-a-uuid/logout", None),
        ("POST", p + f"/users/{uuid.uuid4()}/logout", None),
        ("POST", p + f"/users/{uuid.uuid4()}/logout", {"everywhere": True}),
        ("POST", p + f"/users/{uuid.uuid4()}/logout", b"not json"),
        ("POST", p + "/users/1%27%3B%20drop/force-reset", None),
        ("POST", p + f"/users/{uuid.uuid4()}/force-reset", None),
        ("POST", p + f"/users/{uuid.uuid4()}/force-reset", [1]),
        # jobs
        ("GET", p + "/jobs?status=lost", None),
        ("GET", p + "/jobs?limit=0", None),
        ("GET", p + "/jobs?limit=101", None),
        ("GET", p + "/jobs?offset=100001", None),
        ("GET", p + "/jobs?orderBy=name", None),
        ("GET", p + "/jobs?orderDir=up", None),
        ("GET", p + "/jobs?name=" + "x" * 101, None),
        ("GET", p + "/jobs?name=sys:cron", None),
        ("GET", p + "/jobs?bogus=1", None),
        ("GET", p + "/jobs", {"status": "failed"}),
        ("GET", p + "/jobs/failed?limit=abc", None),
        ("GET", "/projects/nope-" + uuid.uuid4().hex + "/jobs/failed", None),
        ("POST", p + "/jobs/not-a-uuid/retry", None),
        ("POST", p + f"/jobs/{uuid.uuid4()}/retry", None),
        ("POST", p + f"/jobs/{uuid.uuid4()}/retry", {"now": True}),
    ]  # fmt: skip
    assert len(bodies) >= 30
    for method, path, body in bodies:
        raw = body if isinstance(body, bytes) else (None if body is None else orjson.dumps(body))
        response = a.call(method, path, raw=raw)
        assert 400 <= response.status_code < 500, (method, path, body, response.text)
        error = response.json()["error"]
        assert error["code"] and error["message"], error
        assert "Traceback" not in response.text and "psycopg" not in response.text


# --- the OpenAPI document ----------------------------------------------------------------------


def test_openapi_document_is_valid_and_its_examples_work(
    a: AdminClient, b: AdminClient, db: psycopg.Connection[Any], cluster: GatewayCluster
) -> None:
    response = a.call("GET", "/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    validate(doc)  # openapi-spec-validator, OpenAPI 3.1
    assert doc["openapi"] == "3.1.0"

    from gateway.control.admin import ROUTES
    from gateway.control.admin_route import PREFIX

    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.full_path) for r in ROUTES}

    sent = 0
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            for example in (content or {}).get("examples", {}).values():
                value = example["value"]
                # a fresh project (and table, key) for each example, so examples are independent
                if path == PREFIX + "/projects" and method == "post":
                    # the example's name may exist from an earlier run: delete it first
                    existing = a.call("GET", f"/projects/{value['name']}")
                    if existing.status_code == 200:
                        a.ok("DELETE", f"/projects/{value['name']}", {"confirm": value["name"]})
                    target = path
                else:
                    name = value.get("confirm") or unique("ex")
                    if a.call("GET", f"/projects/{name}").status_code == 200:
                        a.ok("DELETE", f"/projects/{name}", {"confirm": name})
                    a.ok("POST", "/projects", {"name": name}, 201)
                    a.ok("POST", f"/projects/{name}/tables", TODOS_TABLE, 201)
                    key = a.ok("POST", f"/projects/{name}/keys", {"type": "server"}, 201)
                    target = path.format(project=name, table="todos", key_id=key["id"])
                r = b.call(method.upper(), target.removeprefix(PREFIX), value)
                assert r.status_code < 300, (method, path, value, r.text)
                sent += 1
    assert sent >= 9

    # routes without a body: their documented query examples (and the action routes) are
    # sent too, against a project with an end user and a failed job
    project = new_project(a, table=False)
    key = a.ok("POST", f"/projects/{project['name']}/keys", {"type": "public"}, 201)["key"]
    server = a.ok("POST", f"/projects/{project['name']}/keys", {"type": "server"}, 201)["key"]
    user = sign_up(cluster.urls[0], key, f"{unique('ex')}@example.test")["user"]
    job = failed_job(cluster.urls[0], server)
    params = {"project": project["name"], "user_id": user["id"], "job_id": job["id"]}
    new_routes = 0
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if operation["tags"][0] not in ("users", "jobs"):
                continue
            assert "requestBody" not in operation
            query = {
                q["name"]: q["example"]
                for q in operation["parameters"]
                if q["in"] == "query" and "example" in q
            }
            assert query or method == "post", (method, path)  # every list has an example
            target = path.format(**params).removeprefix(PREFIX)
            if query:
                target += "?" + "&".join(f"{k}={v}" for k, v in query.items())
            r = b.call(method.upper(), target)
            assert r.status_code < 300, (method, target, r.text)
            new_routes += 1
    assert new_routes == 6


def test_a_locked_table_answers_503_instead_of_holding_a_connection(
    a: AdminClient, pg_url: str
) -> None:
    project = new_project(a)
    p = f"/projects/{project['name']}"
    with psycopg.connect(pg_url) as holder:
        holder.execute(f"LOCK TABLE {project['schema_name']}.todos IN ACCESS SHARE MODE")
        r = a.call("DELETE", p + "/tables/todos")  # waits lock_timeout, then gives up
        holder.rollback()
    assert r.status_code == 503 and r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert a.ok("DELETE", p + "/tables/todos")["dropped"] is True  # nothing was half-done


def test_usage_and_plans_routes(a: AdminClient) -> None:
    """Issue 14: a project's usage and the plans, through the signed admin API."""
    project = new_project(a)
    usage = a.ok("GET", f"/projects/{project['name']}/usage")
    assert usage["plan"] == "free" and usage["project_id"] == project["id"]
    assert usage["requests_today"]["limit"] == 10_000
    assert usage["bandwidth_month"]["limit"] == 1024**3
    assert usage["job_runs_month"]["source"] == "gateway.job_usage"  # the jobs counter
    assert usage["job_runs_month"]["used"] == 0
    plans = a.ok("GET", "/plans")
    assert {"free", "starter", "growth", "scale", "enterprise"} <= {p["name"] for p in plans}
    assert a.call("GET", "/projects/no-such-project/usage").status_code == 404


# --- auth users, jobs and limits (issue 15's remaining routes) ----------------------------------

AUTH = "/v1/inhouse/auth"
JOBS = "/v1/inhouse/jobs"


def sign_up(url: str, key: str, address: str, password: str = "a-long-password") -> dict[str, Any]:
    r = httpx.post(
        url + AUTH + "/sign-up",
        json={"email": address, "password": password},
        headers={"x-api-key": key},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["data"]


def sign_in(url: str, key: str, address: str, password: str = "a-long-password") -> httpx.Response:
    return httpx.post(
        url + AUTH + "/sign-in",
        json={"email": address, "password": password},
        headers={"x-api-key": key},
        timeout=30,
    )


def current_user(url: str, key: str, token: str) -> httpx.Response:
    headers = {"x-api-key": key, "Authorization": f"Bearer {token}"}
    return httpx.get(url + AUTH + "/user", headers=headers, timeout=30)


def failed_job(url: str, server_key: str, name: str = "lost") -> dict[str, Any]:
    """A job that really fails: the project has no endpoint, one attempt, the worker runs it."""
    headers = {"x-api-key": server_key}
    r = httpx.post(
        url + JOBS, json={"name": name, "payload": {}, "maxAttempts": 1}, headers=headers
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["data"]["job"]["id"]
    seen: list[dict[str, Any]] = []

    def failed() -> dict[str, Any] | None:
        seen[:] = [httpx.get(f"{url}{JOBS}/{job_id}", headers=headers).json()["data"]["job"]]
        return seen[0] if seen[0]["status"] == "failed" else None

    return wait_until(
        failed, timeout=30, interval=0.1, message=lambda: f"job {job_id} failing: {seen}"
    )


def test_auth_users_routes_take_effect_on_every_instance(
    a: AdminClient, b: AdminClient, cluster: GatewayCluster, pg_url: str
) -> None:
    project = new_project(a, table=False)
    p = f"/projects/{project['name']}"
    key = a.ok("POST", p + "/keys", {"type": "public"}, 201)["key"]
    one, two = cluster.urls
    addresses = [f"{unique('u')}@example.test" for _ in range(3)]
    users = [sign_up(one, key, address) for address in addresses]
    user_id = users[0]["user"]["id"]
    tokens = [users[0]["session"]["token"], sign_in(two, key, addresses[0]).json()["data"]]
    tokens[1] = tokens[1]["session"]["token"]
    for url in cluster.urls:  # both sessions work on both instances
        assert all(current_user(url, key, t).status_code == 200 for t in tokens)

    # list, paged: the CLI's function, oldest first
    page = a.ok("GET", p + "/users?limit=2")
    assert page["total"] == 3 and [u["email"] for u in page["users"]] == addresses[:2]
    assert page["users"][0]["activeSessions"] == 2
    rest = b.ok("GET", p + "/users?limit=2&offset=2")
    assert [u["email"] for u in rest["users"]] == addresses[2:] and rest["total"] == 3
    assert b.ok("GET", p + "/users?offset=10") == {**rest, "users": []}
    # the CLI's function: the same page
    assert cli_json(pg_url, "auth", "users", project["name"], "--limit", "2") == page

    # log out everywhere, through instance b: the next request on either instance is 401
    out = b.ok("POST", p + f"/users/{user_id}/logout")
    assert out == {"userId": user_id, "email": addresses[0], "revokedSessions": 2}
    for url in cluster.urls:
        for token in tokens:
            r = current_user(url, key, token)
            assert r.status_code == 401 and r.json()["error"]["code"] == "SESSION_NOT_FOUND"

    # force reset: the fresh session ends and the password no longer signs in
    fresh = sign_in(one, key, addresses[0]).json()["data"]["session"]["token"]
    assert current_user(two, key, fresh).status_code == 200
    reset = a.ok("POST", p + f"/users/{user_id}/force-reset")
    assert reset["passwordResetRequired"] is True and reset["revokedSessions"] == 1
    assert current_user(two, key, fresh).status_code == 401
    refused = sign_in(two, key, addresses[0])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "INVALID_CREDENTIALS"
    listed = a.ok("GET", p + "/users")["users"][0]
    assert listed["passwordResetRequired"] is True and listed["activeSessions"] == 0

    # not found: another project's user, an unknown one, an unknown project
    other = new_project(a, table=False)
    r = a.call("POST", f"/projects/{other['name']}/users/{user_id}/logout")
    assert r.status_code == 404 and r.json()["error"]["field"] == "user_id"
    assert a.call("POST", p + f"/users/{uuid.uuid4()}/force-reset").status_code == 404
    assert a.call("GET", "/projects/no-such-project/users").status_code == 404


def test_jobs_routes_list_failed_and_retry(
    a: AdminClient, b: AdminClient, cluster: GatewayCluster
) -> None:
    project = new_project(a, table=False)
    p = f"/projects/{project['name']}"
    server = a.ok("POST", p + "/keys", {"type": "server"}, 201)["key"]
    one = cluster.urls[0]
    broken = failed_job(one, server, "lost")
    assert "no endpoint" in broken["error"]
    later = httpx.post(
        one + JOBS,
        json={"name": "later", "payload": {"n": 1}, "delay": "1h"},
        headers={"x-api-key": server},
    ).json()["data"]["job"]

    everything = a.ok("GET", p + "/jobs")
    assert everything["total"] == 2 and everything["hasMore"] is False
    assert {j["id"] for j in everything["jobs"]} == {broken["id"], later["id"]}
    # the jobs API's filters, same names
    assert [j["id"] for j in b.ok("GET", p + "/jobs?status=delayed")["jobs"]] == [later["id"]]
    assert [j["id"] for j in b.ok("GET", p + "/jobs?name=lost")["jobs"]] == [broken["id"]]
    paged = b.ok("GET", p + "/jobs?limit=1&orderBy=createdAt&orderDir=asc")
    assert [j["id"] for j in paged["jobs"]] == [broken["id"]] and paged["hasMore"] is True
    failed = a.ok("GET", p + "/jobs/failed")
    assert [j["id"] for j in failed["jobs"]] == [broken["id"]] and failed["total"] == 1
    assert a.ok("GET", p + "/jobs/failed?status=delayed")["total"] == 1  # always failed ones

    # the jobs API sees the admin's retry: attempts start again, and the worker runs it again
    retried = b.ok("POST", p + f"/jobs/{broken['id']}/retry")["job"]
    assert retried["id"] == broken["id"] and retried["attemptsMade"] == 0
    assert retried["status"] in ("pending", "active", "failed")
    r = a.call("POST", p + f"/jobs/{later['id']}/retry")  # only failed jobs
    assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_ERROR"
    assert a.call("POST", p + f"/jobs/{uuid.uuid4()}/retry").status_code == 404
    other = new_project(a, table=False)
    assert a.call("POST", f"/projects/{other['name']}/jobs/{broken['id']}/retry").status_code == 404
    assert a.call("GET", "/projects/no-such-project/jobs").status_code == 404
    again = a.ok("GET", p + "/jobs?limit=100")
    assert again["total"] == 2  # a retry is the same job, not a new one


def test_project_limits_take_any_plan_and_every_override(a: AdminClient, pg_url: str) -> None:
    plan = unique("plan").lower()
    cli_json(pg_url, "plan", "set", plan, "--create", "--job-runs-monthly", "7")
    project = new_project(a, table=False)
    p = f"/projects/{project['name']}"
    assert a.ok("PATCH", p, {"tier": plan})["tier"] == plan
    usage = a.ok("GET", p + "/usage")
    assert usage["plan"] == plan and usage["job_runs_month"]["limit"] == 7
    a.ok(
        "PATCH",
        p,
        {
            "bandwidth_bytes_monthly": 10 * 1024**3,
            "db_size_bytes": -1,
            "job_runs_monthly": 50,
            "realtime_streams": 3,
            "requests_per_day": 1234,
        },
    )
    usage = a.ok("GET", p + "/usage")
    assert usage["bandwidth_month"]["limit"] == 10 * 1024**3
    assert usage["database_size"]["limit"] is None  # -1: unlimited
    assert usage["job_runs_month"]["limit"] == 50 and usage["realtime_streams"] == 3
    assert usage["requests_today"]["limit"] == 1234
    # null drops the override: the plan's value again (the CLI's "plan")
    a.ok("PATCH", p, {"job_runs_monthly": None})
    assert a.ok("GET", p + "/usage")["job_runs_month"]["limit"] == 7
    # the CLI sees the same project
    got = cli_json(pg_url, "project", "get", project["name"])
    assert got["tier"] == plan
    # a new project can start on it too
    created = a.ok("POST", "/projects", {"name": unique(), "tier": plan}, 201)
    assert created["tier"] == plan
    r = a.call("PATCH", p, {"tier": "no-such-plan"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "tier"


def test_nul_and_out_of_range_inputs_are_4xx_never_500(a: AdminClient) -> None:
    """NUL can't reach PostgreSQL text: in a path's project or user, in a body's string, it
    is the caller's error (issue 21's class of bug, on the admin API)."""
    project = new_project(a, table=False)
    p = f"/projects/{project['name']}"
    bad_column = {
        "name": "notes",
        "columns": [
            {"name": "id", "type": "bigint", "primary_key": True},
            {"name": "body", "type": "text", "default": "a\x00b"},
        ],
    }
    cases: list[tuple[str, str, Any]] = [
        ("GET", "/projects/a%00b", None),
        ("GET", "/projects/a%00b/users", None),
        ("GET", "/projects/a%00b/keys", None),
        ("POST", f"{p}/users/%00/logout", None),
        ("POST", f"{p}/users/00000000-0000-0000-0000-00000000000%00/force-reset", None),
        ("DELETE", p, {"confirm": "x\x00"}),
        ("POST", f"{p}/tables", bad_column),
        ("GET", f"{p}/jobs?name=a%00b", None),
    ]
    for method, path, body in cases:
        r = a.call(method, path, body)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert r.json()["ok"] is False
