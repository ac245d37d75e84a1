"""The query API through HTTP, against a real gateway process and a real PostgreSQL.

Covers the original contract's operators, bounds, mutations and permissions, tenant
isolation, hostile input and batches. Each test works on its own fresh project.
"""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.polling import wait_until

BASE = "/v1/inhouse/db"


class Api:
    """A project seen through one key."""

    def __init__(self, client: httpx.Client, key: str) -> None:
        self.client = client
        self.key = key

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def query(self, **query: Any) -> httpx.Response:
        return self.client.post("/query", json={"query": query}, headers=self.headers())

    def ok(self, **query: Any) -> Any:
        response = self.query(**query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["error"] is None and body["status"] == 200
        return body["data"]

    def error(self, status: int, code: str, **query: Any) -> dict[str, Any]:
        response = self.query(**query)
        assert response.status_code == status, response.text
        body = response.json()
        assert body["data"] is None and body["status"] == status
        assert body["error"]["code"] == code, body
        return body["error"]


def eventually_error(api: Api, status: int, code: str, timeout: float = 5.0, **query: Any) -> None:
    """Until the query is refused with ``status`` and ``code`` (a change reaching the cache)."""
    last: list[httpx.Response] = []

    def refused() -> bool:
        last[:] = [api.query(**query)]
        return last[0].status_code == status and last[0].json()["error"]["code"] == code

    wait_until(refused, timeout=timeout, interval=0.01, message=lambda: last[0].text)


SEED = [
    {
        "title": "alpha",
        "done": False,
        "tags": ["a", "x"],
        "meta": {"n": 1, "k": "v"},
        "owner_email": "a@example.com",
    },
    {"title": "beta", "done": True, "tags": ["b"], "meta": {"n": 2}, "owner_email": None},
    {
        "title": "Gamma",
        "done": False,
        "tags": ["x", "y"],
        "meta": None,
        "owner_email": "g@example.com",
    },
    {"title": "delta", "done": True, "tags": None, "meta": {"n": 4}, "owner_email": None},
]


@pytest.fixture
def project(make_project: Any, client: httpx.Client) -> dict[str, Any]:
    created = make_project()
    server_api = Api(client, created["server_key"])
    server_api.ok(operation="insert", table="todos", data=SEED, returning=["id"])
    return {**created, "public": Api(client, created["public_key"]), "server": server_api}


def titles(rows: list[dict[str, Any]]) -> list[str]:
    return [r["title"] for r in rows]


# --- reads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "column", "value", "expected"),
    [
        ("eq", "title", "beta", ["beta"]),
        ("neq", "title", "beta", ["alpha", "Gamma", "delta"]),
        ("gt", "id", 2, ["Gamma", "delta"]),
        ("gte", "id", 2, ["beta", "Gamma", "delta"]),
        ("lt", "id", 2, ["alpha"]),
        ("lte", "id", 2, ["alpha", "beta"]),
        ("like", "title", "%ta", ["beta", "delta"]),
        ("ilike", "title", "g%", ["Gamma"]),
        ("in", "title", ["alpha", "delta", "zeta"], ["alpha", "delta"]),
        ("in", "title", [], []),
        ("is", "meta", None, ["Gamma"]),
        ("is", "done", True, ["beta", "delta"]),
        ("is", "done", False, ["alpha", "Gamma"]),
        ("contains", "tags", ["x"], ["alpha", "Gamma"]),
        ("containedBy", "tags", ["a", "b", "x"], ["alpha", "beta"]),
        ("overlaps", "tags", ["y", "b"], ["beta", "Gamma"]),
        ("contains", "meta", {"n": 2}, ["beta"]),
    ],
)
def test_every_operator(
    project: dict[str, Any], op: str, column: str, value: Any, expected: list[str]
) -> None:
    if column == "id":
        value = value + _first_id(project) - 1
    rows = project["public"].ok(
        operation="select",
        table="todos",
        columns=["id", "title"],
        filters=[{"column": column, "op": op, "value": value}],
        sorts=[{"column": "id", "direction": "asc"}],
    )
    assert titles(rows) == expected


def _first_id(project: dict[str, Any]) -> int:
    rows = project["server"].ok(
        operation="select", table="todos", columns=["id"], sorts=[{"column": "id"}], limit=1
    )
    return int(rows[0]["id"])


def test_sorts_nulls_limit_offset(project: dict[str, Any]) -> None:
    api = project["public"]
    by_meta = api.ok(
        operation="select",
        table="todos",
        columns=["title"],
        sorts=[{"column": "meta", "direction": "asc"}],
    )
    assert titles(by_meta)[-1] == "Gamma"  # NULLS LAST by default
    first = api.ok(
        operation="select",
        table="todos",
        columns=["title"],
        sorts=[{"column": "meta", "direction": "asc", "nullsFirst": True}],
    )
    assert titles(first)[0] == "Gamma"
    desc = api.ok(
        operation="select",
        table="todos",
        columns=["title"],
        sorts=[{"column": "title", "direction": "desc"}],
        limit=2,
        offset=1,
    )
    assert titles(desc) == ["beta", "alpha"]
    response = api.query(operation="select", table="todos", limit=2)
    assert response.json()["count"] == 2
    api.error(400, "INVALID_QUERY", operation="select", table="todos", limit=1001)
    api.error(400, "INVALID_QUERY", operation="select", table="todos", offset=100001)
    api.error(400, "INVALID_QUERY", operation="select", table="todos", limit=-1)
    assert api.ok(operation="select", table="todos", limit=1000, offset=100000) == []


def test_default_limit_is_100(project: dict[str, Any]) -> None:
    api = project["server"]
    api.ok(operation="insert", table="todos", data=[{"title": f"t{i}"} for i in range(150)])
    assert len(api.ok(operation="select", table="todos", columns=["id"])) == 100


# --- writes ---------------------------------------------------------------------------------


def test_insert_update_delete_returning(project: dict[str, Any]) -> None:
    api = project["public"]
    inserted = api.ok(
        operation="insert",
        table="todos",
        data={"title": "new", "tags": ["q"], "meta": {"deep": [1, {"x": None}]}},
    )
    assert inserted[0]["title"] == "new" and inserted[0]["meta"] == {"deep": [1, {"x": None}]}
    assert "owner_email" not in inserted[0] and "internal_note" not in inserted[0]
    assert inserted[0]["done"] is False and inserted[0]["created_at"]
    bulk = api.ok(
        operation="insert",
        table="todos",
        data=[{"title": "b1"}, {"title": "b2"}],
        returning=["title"],
    )
    assert bulk == [{"title": "b1"}, {"title": "b2"}]
    updated = api.ok(
        operation="update",
        table="todos",
        set={"done": True},
        filters=[{"column": "title", "op": "in", "value": ["b1", "b2"]}],
        returning=["title", "done"],
    )
    assert sorted(titles(updated)) == ["b1", "b2"] and all(r["done"] for r in updated)
    deleted = api.ok(
        operation="delete",
        table="todos",
        filters=[{"column": "title", "op": "eq", "value": "b1"}],
        returning=["title"],
    )
    assert deleted == [{"title": "b1"}]
    remaining = api.ok(
        operation="select",
        table="todos",
        columns=["title"],
        filters=[{"column": "title", "op": "like", "value": "b%"}],
    )
    assert titles(remaining) == ["beta", "b2"] or sorted(titles(remaining)) == ["b2", "beta"]


def test_mutation_rails(project: dict[str, Any], db: psycopg.Connection[Any]) -> None:
    api = project["public"]
    api.error(400, "FILTERLESS_MUTATION", operation="update", table="todos", set={"done": True})
    api.error(400, "FILTERLESS_MUTATION", operation="delete", table="todos")
    error = api.error(
        400,
        "ROW_LIMIT_EXCEEDED",
        operation="update",
        table="todos",
        set={"title": "same"},
        maxRows=1,
        filters=[{"column": "done", "op": "is", "value": True}],
    )
    assert error["details"] == {"maxRows": 1, "matchedRows": 2}
    rows = db.execute(
        f"SELECT count(*) AS n FROM {project['schema_name']}.todos WHERE title = 'same'"
    ).fetchone()
    assert rows["n"] == 0
    project["server"].ok(
        operation="insert", table="todos", data=[{"title": f"bulk{i}"} for i in range(60)]
    )
    error = api.error(
        400,
        "ROW_LIMIT_EXCEEDED",
        operation="delete",
        table="todos",
        filters=[{"column": "title", "op": "like", "value": "bulk%"}],
    )
    assert error["details"] == {"maxRows": 50, "matchedRows": 60}  # public default
    deleted = project["server"].ok(
        operation="delete",
        table="todos",
        returning=["id"],
        filters=[{"column": "title", "op": "like", "value": "bulk%"}],
    )
    assert len(deleted) == 60  # server keys are unbounded unless they ask


def test_value_errors_name_the_column(project: dict[str, Any]) -> None:
    api = project["public"]
    error = api.error(
        400,
        "INVALID_VALUE",
        operation="select",
        table="todos",
        filters=[{"column": "id", "op": "eq", "value": "abc"}],
    )
    assert "id" in error["message"]
    error = api.error(
        400,
        "INVALID_VALUE",
        operation="insert",
        table="todos",
        data={"title": "x", "created_at": "yesterday"},
    )
    assert "created_at" in error["message"]
    api.error(
        400, "INVALID_VALUE", operation="insert", table="todos", data={"title": "x", "done": "yes"}
    )
    api.error(
        400,
        "INVALID_VALUE",
        operation="select",
        table="todos",
        filters=[{"column": "id", "op": "eq", "value": 2**70}],
    )
    api.error(400, "NOT_NULL_VIOLATION", operation="insert", table="todos", data={"title": None})


# --- permissions ----------------------------------------------------------------------------


def test_permission_matrix(
    project: dict[str, Any], make_project: Any, client: httpx.Client, pg_url: str
) -> None:
    public, server = project["public"], project["server"]
    public_row = public.ok(operation="select", table="todos", limit=1)[0]
    server_row = server.ok(operation="select", table="todos", limit=1)[0]
    assert "owner_email" not in public_row and "internal_note" not in public_row
    assert "owner_email" in server_row and "internal_note" not in server_row
    public.error(
        403, "SENSITIVE_COLUMN_ACCESS", operation="select", table="todos", columns=["owner_email"]
    )
    public.error(
        403,
        "SENSITIVE_COLUMN_ACCESS",
        operation="select",
        table="todos",
        filters=[{"column": "owner_email", "op": "like", "value": "a%"}],
    )
    public.error(
        403,
        "SENSITIVE_COLUMN_ACCESS",
        operation="select",
        table="todos",
        sorts=[{"column": "owner_email"}],
    )
    server.error(
        403, "COLUMN_NOT_READABLE", operation="select", table="todos", columns=["internal_note"]
    )
    server.error(
        403,
        "COLUMN_NOT_READABLE",
        operation="select",
        table="todos",
        filters=[{"column": "internal_note", "op": "is", "value": None}],
    )
    # the original's canWriteColumn: allow_client_write = false closes the column to
    # public keys only; server keys write every column
    public.error(
        403,
        "COLUMN_NOT_WRITABLE",
        operation="insert",
        table="todos",
        data={"title": "x", "internal_note": "secret"},
    )
    assert server.ok(operation="insert", table="todos", data={"title": "x", "internal_note": "s"})
    public.error(400, "COLUMN_NOT_FOUND", operation="select", table="todos", columns=["nope"])
    public.error(404, "TABLE_NOT_FOUND", operation="select", table="nope")
    assert server.ok(operation="select", table="todos", columns=["owner_email"], limit=1)

    # read-only keys and client flags
    from gateway.control.keys import create_key
    from gateway.control.projects import connect

    with connect(pg_url) as conn:
        reader = create_key(conn, project["id"], key_type="public", scopes=["read"])
        conn.execute(
            "UPDATE gateway.table_registry SET allow_client_write = false WHERE project_id = %s",
            [project["id"]],
        )
        conn.commit()
    # The change reaches the instance's metadata cache through LISTEN/NOTIFY: milliseconds
    # after the commit, not before (docs/metadata.md, bounded staleness).
    eventually_error(public, 403, "TABLE_NOT_WRITABLE", operation="insert", table="todos",
                     data={"title": "x"})  # fmt: skip
    read_only = Api(client, reader["key"])
    assert read_only.ok(operation="select", table="todos", columns=["id"], limit=1)
    read_only.error(
        403, "INSUFFICIENT_SCOPES", operation="insert", table="todos", data={"title": "x"}
    )
    public.error(403, "TABLE_NOT_WRITABLE", operation="insert", table="todos", data={"title": "x"})


def test_schema_filters_what_the_key_cannot_read(project: dict[str, Any]) -> None:
    def schema(api: Api) -> dict[str, Any]:
        response = api.client.get("/schema", headers=api.headers())
        assert response.status_code == 200, response.text
        return response.json()

    public = schema(project["public"])
    server = schema(project["server"])
    assert public["project_id"] == project["id"] and public["table_count"] == 1
    assert public["schema_name"] == project["schema_name"]
    public_columns = {c["name"]: c for c in public["tables"][0]["columns"]}
    server_columns = {c["name"]: c for c in server["tables"][0]["columns"]}
    assert "owner_email" not in public_columns and "internal_note" not in public_columns
    assert "owner_email" in server_columns and "internal_note" not in server_columns
    assert server_columns["owner_email"]["sensitive"] is True
    assert "sensitive" not in public_columns["title"]
    assert public_columns["id"] == {
        "name": "id",
        "type": "bigint",
        "nullable": False,
        "primaryKey": True,
    }
    table = public["tables"][0]
    assert table["readable"] is True and table["writable"] is True and table["system"] is False


# --- keys -------------------------------------------------------------------------------------


def test_key_errors(project: dict[str, Any], client: httpx.Client, pg_url: str) -> None:
    body = {"query": {"operation": "select", "table": "todos"}}
    assert client.post("/query", json=body).json()["error"]["code"] == "INVALID_API_KEY"
    bad = client.post("/query", json=body, headers={"Authorization": "Bearer sheen_pk_nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "INVALID_API_KEY"
    via_header = client.post("/query", json=body, headers={"x-api-key": project["public_key"]})
    assert via_header.status_code == 200
    from gateway.control.keys import create_key, revoke_key
    from gateway.control.projects import connect, set_limits

    with connect(pg_url) as conn:
        revoke_key(conn, project["public_key_id"])
        expiring = create_key(conn, project["id"], key_type="public", expires_in_s=1)
        conn.execute(
            "UPDATE gateway.api_keys SET expires_at = now() - interval '1 second' WHERE id = %s",
            [expiring["id"]],
        )
        conn.commit()
    revoked = client.post("/query", json=body, headers=project["public"].headers())
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "REVOKED_API_KEY"
    expired = client.post(
        "/query", json=body, headers={"Authorization": f"Bearer {expiring['key']}"}
    )
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "EXPIRED_API_KEY"
    with connect(pg_url) as conn:
        set_limits(conn, project["id"], status="suspended")
    suspended = client.post("/query", json=body, headers=project["server"].headers())
    assert suspended.status_code == 403
    assert suspended.json()["error"]["code"] == "PROJECT_SUSPENDED"


# --- tenant isolation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "table",
    [
        '"todos"',
        "todos;",
        "public.todos",
        "{schema}.todos",
        "../todos",
        "todos..",
        "t\u03bfdos",
        "\uff54\uff4f\uff44\uff4f\uff53",
        "TODOS",
        "todos ",
        "todos\u200b",
        "pg_catalog.pg_authid",
        "gateway.api_keys",
    ],
)
def test_tenant_isolation(
    make_project: Any, client: httpx.Client, table: str, db: psycopg.Connection[Any]
) -> None:
    mine, theirs = make_project(), make_project()
    Api(client, theirs["server_key"]).ok(
        operation="insert", table="todos", data={"title": "theirs"}
    )
    api = Api(client, mine["server_key"])
    name = table.format(schema=theirs["schema_name"])
    for query in (
        {"operation": "select", "table": name},
        {
            "operation": "delete",
            "table": name,
            "filters": [{"column": "id", "op": "gt", "value": 0}],
        },
        {"operation": "insert", "table": name, "data": {"title": "x"}},
    ):
        response = api.query(**query)
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["code"] in (
            "TABLE_NOT_FOUND",
            "INVALID_QUERY",
            "INVALID_TABLE",
        )
    assert api.ok(operation="select", table="todos") == []
    count = db.execute(f"SELECT count(*) AS n FROM {theirs['schema_name']}.todos").fetchone()
    assert count["n"] == 1


# --- hostile input --------------------------------------------------------------------------

INJECTIONS = [
    "x'; DROP TABLE todos; --",
    '"; DELETE FROM todos; --',
    "id) OR (1=1",
    "title\x00",
    "1; SELECT pg_sleep(1)",
    "*/ OR 1=1 /*",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_sql_fragments_never_reach_sql(
    project: dict[str, Any], payload: str, db: psycopg.Connection[Any]
) -> None:
    api = project["server"]
    queries = [
        {"operation": "select", "table": payload},
        {"operation": payload, "table": "todos"},
        {"operation": "select", "table": "todos", "columns": [payload]},
        {
            "operation": "select",
            "table": "todos",
            "filters": [{"column": payload, "op": "eq", "value": 1}],
        },
        {
            "operation": "select",
            "table": "todos",
            "filters": [{"column": "title", "op": payload, "value": 1}],
        },
        {
            "operation": "select",
            "table": "todos",
            "sorts": [{"column": "title", "direction": payload}],
        },
        {
            "operation": "select",
            "table": "todos",
            "sorts": [{"column": payload, "direction": "asc"}],
        },
        {"operation": "insert", "table": "todos", "data": {payload: "x"}},
        {
            "operation": "update",
            "table": "todos",
            "set": {payload: "x"},
            "filters": [{"column": "id", "op": "gt", "value": 0}],
        },
        {
            "operation": "insert",
            "table": "todos",
            "data": {"title": "r"},
            "returning": [payload],
        },
    ]
    for query in queries:
        response = api.query(**query)
        assert 400 <= response.status_code < 500, (query, response.text)
        assert response.json()["error"]["code"]
    # a value is only ever a value
    assert "\x00" in payload or (
        api.ok(
            operation="select",
            table="todos",
            filters=[{"column": "title", "op": "eq", "value": payload}],
        )
        == []
    )
    if "\x00" not in payload:
        inserted = api.ok(
            operation="insert", table="todos", data={"title": payload}, returning=["title"]
        )
        assert inserted == [{"title": payload}]
    count = db.execute(f"SELECT count(*) AS n FROM {project['schema_name']}.todos").fetchone()
    assert count["n"] in (4, 5)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b"42",
        b'"query"',
        b'{"query": null}',
        b'{"query": []}',
        b'{"query": {"operation": 1, "table": "todos"}}',
        b'{"query": {"operation": "select", "table": ["todos"]}}',
        b'{"query": {"operation": "select", "table": "todos", "limit": "10"}}',
        b'{"query": {"operation": "select", "table": "todos", "limit": 1e400}}',
        b'{"query": {"operation": "select", "table": "todos", "limit": true}}',
        b'{"query": {"operation": "select", "table": "todos", "offset": 99999999999999999999999}}',
        b'{"query": {"operation": "select", "table": "todos", "filters": {}}}',
        b'{"query": {"operation": "select", "table": "todos", "filters": [[]]}}',
        b'{"query": {"operation": "select", "table": "todos", "sorts": [{"column": 5}]}}',
        b'{"query": {"operation": "insert", "table": "todos", "data": []}}',
        b'{"query": {"operation": "insert", "table": "todos", "data": "x"}}',
        b'{"query": {"operation": "update", "table": "todos", "set": {}, '
        b'"filters": [{"column": "id", "op": "eq", "value": 1}]}}',
        b'{"query": {"operation": "select", "table": "todos", "filters": [{"column": "meta", '
        b'"op": "contains", "value": ' + b"[" * 200 + b"]" * 200 + b"}]}}",
        b'{"query": {"operation": "select", "table": "todos\\u0000"}}',
        b"\xff\xfe garbage",
    ],
)
def test_malformed_bodies_get_4xx(
    project: dict[str, Any], body: bytes, client: httpx.Client
) -> None:
    response = client.post(
        "/query",
        content=body,
        headers={**project["server"].headers(), "content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    payload = response.json()
    assert payload["data"] is None and payload["error"]["code"]
    assert "Traceback" not in response.text and "SELECT" not in response.text


def test_payload_too_large(project: dict[str, Any], client: httpx.Client) -> None:
    big = {"query": {"operation": "insert", "table": "todos", "data": {"title": "x" * 300_000}}}
    response = client.post("/query", json=big, headers=project["server"].headers())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
names = st.one_of(
    st.sampled_from(
        [
            "id",
            "title",
            "done",
            "tags",
            "meta",
            "owner_email",
            "internal_note",
            "created_at",
            "*",
            "nope",
        ]
    ),
    st.text(max_size=12),
)
filters = st.fixed_dictionaries(
    {
        "column": names,
        "op": st.one_of(
            st.sampled_from(
                [
                    "eq",
                    "neq",
                    "gt",
                    "gte",
                    "lt",
                    "lte",
                    "like",
                    "ilike",
                    "in",
                    "is",
                    "contains",
                    "containedBy",
                    "overlaps",
                ]
            ),
            st.text(max_size=6),
        ),
        "value": json_values,
    }
)
queries = st.fixed_dictionaries(
    {
        "operation": st.one_of(
            st.sampled_from(["select", "insert", "update", "delete"]), json_values
        ),
        "table": st.one_of(st.just("todos"), names, json_values),
    },
    optional={
        "columns": st.one_of(st.lists(names, max_size=4), json_values),
        "filters": st.one_of(st.lists(filters, max_size=3), json_values),
        "sorts": st.lists(
            st.fixed_dictionaries(
                {"column": names},
                optional={
                    "direction": st.one_of(st.sampled_from(["asc", "desc"]), json_values),
                    "nullsFirst": json_values,
                },
            ),
            max_size=2,
        ),
        "limit": st.one_of(st.integers(-5, 2000), json_values),
        "offset": st.one_of(st.integers(-5, 200_000), json_values),
        "data": st.one_of(
            st.dictionaries(names, json_values, max_size=4),
            st.lists(st.dictionaries(names, json_values, max_size=3), max_size=3),
            json_values,
        ),
        "set": st.one_of(st.dictionaries(names, json_values, max_size=3), json_values),
        "returning": st.one_of(st.lists(names, max_size=3), json_values),
        "maxRows": st.one_of(st.integers(-2, 100), json_values),
    },
)


def test_random_contracts_never_5xx(make_project: Any, client: httpx.Client) -> None:
    created = make_project()
    api = Api(client, created["public_key"])

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(query=queries)
    def check(query: dict[str, Any]) -> None:
        response = client.post("/query", json={"query": query}, headers=api.headers())
        assert response.status_code < 500, (query, response.text)

    check()


# --- batches, CORS, compression ---------------------------------------------------------------


def test_batch_is_all_or_nothing(
    project: dict[str, Any], client: httpx.Client, db: psycopg.Connection[Any]
) -> None:
    headers = project["server"].headers()
    ok = client.post(
        "/batch",
        headers=headers,
        json={
            "queries": [
                {"operation": "insert", "table": "todos", "data": {"title": "b-one"}},
                {
                    "operation": "select",
                    "table": "todos",
                    "columns": ["title"],
                    "filters": [{"column": "title", "op": "eq", "value": "b-one"}],
                },
            ]
        },
    )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["error"] is None and body["status"] == 200
    assert body["data"][1]["data"] == [{"title": "b-one"}]
    failing = client.post(
        "/batch",
        headers=headers,
        json={
            "queries": [
                {"operation": "insert", "table": "todos", "data": {"title": "b-two"}},
                {
                    "operation": "update",
                    "table": "todos",
                    "set": {"title": None},
                    "filters": [{"column": "title", "op": "eq", "value": "b-one"}],
                },
            ]
        },
    )
    assert failing.status_code == 400, failing.text
    error = failing.json()["error"]
    assert error["code"] == "NOT_NULL_VIOLATION" and error["details"]["index"] == 1
    row = db.execute(
        f"SELECT count(*) AS n FROM {project['schema_name']}.todos WHERE title = 'b-two'"
    ).fetchone()
    assert row["n"] == 0
    invalid = client.post(
        "/batch",
        headers=headers,
        json={
            "queries": [
                {"operation": "select", "table": "todos"},
                {"operation": "select", "table": "nope"},
            ]
        },
    )
    assert invalid.status_code == 404 and invalid.json()["error"]["details"]["index"] == 1
    for queries_value in ([], [{"operation": "select", "table": "todos"}] * 21, "x"):
        response = client.post("/batch", headers=headers, json={"queries": queries_value})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "INVALID_QUERY"


def test_cors_preflight_and_exposed_headers(project: dict[str, Any], client: httpx.Client) -> None:
    preflight = client.options(
        "/query",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "https://app.example")
    response = client.post(
        "/query",
        headers={**project["public"].headers(), "Origin": "https://app.example"},
        json={"query": {"operation": "select", "table": "todos"}},
    )
    exposed = response.headers["access-control-expose-headers"].lower()
    for name in (
        "x-ratelimit-remaining",
        "ratelimit",
        "retry-after",
        "x-request-id",
        "x-gateway-duration-ms",
    ):
        assert name in exposed
    assert response.headers["x-project-id"] == project["id"]
    assert float(response.headers["x-gateway-duration-ms"]) >= 0
    assert len(response.headers["x-request-id"]) >= 16
    assert "server" not in response.headers  # the server software is not advertised


def test_large_responses_are_gzipped(project: dict[str, Any], client: httpx.Client) -> None:
    project["server"].ok(
        operation="insert",
        table="todos",
        data=[{"title": f"row {i} " + "x" * 40} for i in range(200)],
    )
    response = client.post(
        "/query",
        headers={**project["public"].headers(), "Accept-Encoding": "gzip"},
        json={"query": {"operation": "select", "table": "todos", "limit": 500}},
    )
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == "gzip"
    assert len(response.json()["data"]) == 204
    raw = client.post(
        "/query",
        headers={**project["public"].headers(), "Accept-Encoding": "gzip"},
        json={"query": {"operation": "select", "table": "todos", "limit": 500}},
        extensions={},
    )
    assert gzip is not None and raw.status_code == 200
