"""Realtime filters (evaluated in Python) agree with the query API's SQL filters.

Differential test: the same filter runs through the query compiler against PostgreSQL and
through ``compile_filters`` against the rows as the capture trigger serializes
them (``to_jsonb``). Hypothesis draws filters from per-column value pools that include
the stored values, neighbours, NULL-ish and coercible strings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from gateway.errors import GatewayError
from gateway.metadata.catalog import Principal
from gateway.query import contract
from gateway.query.compiler import compile_query
from gateway.query.executor import run_transaction
from gateway.query.pipeline import load_catalog
from gateway.realtime.filters import compile_filters

THINGS = {
    "name": "things",
    "columns": [
        {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
        {"name": "t", "type": "text"},
        {"name": "n", "type": "numeric"},
        {"name": "i", "type": "integer"},
        {"name": "b", "type": "boolean"},
        {"name": "ts", "type": "timestamptz"},
        {"name": "d", "type": "date"},
        {"name": "u", "type": "uuid"},
        {"name": "tags", "type": "text[]"},
        {"name": "nums", "type": "integer[]"},
        {"name": "j", "type": "jsonb"},
    ],
}

U1 = "8f1b0a52-7a7e-4d0c-9d2a-1d1e2f3a4b5c"
U2 = "00000000-0000-4000-8000-000000000001"
ROWS = [
    ("Alpha", 1.5, 1, True, "2026-01-01T10:00:00+00:00", "2026-01-01", U1, ["a", "b"], [1, 2],
     {"k": 1, "tags": ["x"]}),
    ("beta", 2, 2, False, "2026-01-02T10:00:00.5+00:00", "2026-01-02", U2, ["b"], [2],
     {"k": 2}),
    ("Gamma ray", -3.25, -3, None, "2025-12-31T23:59:59+00:00", "2025-12-31", None, [], [],
     [1, 2, 3]),
    ("a_b%c", 0, 0, True, None, None, U1, None, None, "text"),
    (None, None, None, None, None, None, None, ["a", None], [3, None], None),
    ("ALPHA", 10, 10, False, "2026-01-01T12:00:00+02:00", "2026-01-01", U2, ["c", "a"], [1],
     {"k": None}),
]  # fmt: skip

POOLS: dict[str, list[Any]] = {
    "id": [1, 2, 3, 0, 6, "2"],
    "t": ["Alpha", "alpha", "beta", "a_b%c", "", "Gamma ray", "ALPHA"],
    "n": [1.5, 2, "2", -3.25, 0, 10, 1.50, "1.5", 9.99],
    "i": [1, 2, -3, 0, 10, "1", 5],
    "b": [True, False, "true"],
    "ts": ["2026-01-01T10:00:00Z", "2026-01-01T10:00:00+00:00", "2026-01-01T11:00:00+01:00",
           "2026-01-02T10:00:00.5Z", "2025-12-31T23:59:59Z", "2026-01-01T12:00:00+02:00"],
    "d": ["2026-01-01", "2026-01-02", "2025-12-31"],
    "u": [U1, U2, U1.upper()],
    "tags": [["a"], ["b"], ["a", "b"], ["c"], [], ["z"]],
    "nums": [[1], [2], [1, 2], [3], [], [9]],
    "j": [{"k": 1}, {"k": 2}, {"tags": ["x"]}, [1], [2, 3], {"k": None}, {}],
}  # fmt: skip
LIKE_POOL = ["%a%", "A%", "a\\_b%", "%ray", "_eta", "%", "alpha", "%\\%%"]
COUNTS = {"compared": 0, "matching_some": 0, "refused_by_sql": 0}
OPS = ["eq", "neq", "gt", "gte", "lt", "lte", "in", "is", "like", "ilike", "contains",
       "containedBy", "overlaps"]  # fmt: skip


@st.composite
def filters(draw: Any) -> dict[str, Any]:
    column = draw(st.sampled_from(sorted(POOLS)))
    op = draw(st.sampled_from(OPS))
    if op == "is":
        value: Any = draw(st.sampled_from([None, True, False]))
    elif op in ("like", "ilike"):
        value = draw(st.sampled_from(LIKE_POOL))
    elif op == "in":
        value = draw(st.lists(st.sampled_from(POOLS[column]), max_size=3))
    else:
        value = draw(st.sampled_from(POOLS[column]))
    return {"column": column, "op": op, "value": value}


@pytest.fixture
def things(make_project: Any, db: psycopg.Connection[Any]) -> dict[str, Any]:
    project = make_project(table=THINGS)
    table = sql.Identifier(project["schema_name"], "things")
    with db.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (t, n, i, b, ts, d, u, tags, nums, j) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
            ).format(table),
            [(*r[:9], orjson.dumps(r[9]).decode() if r[9] is not None else None) for r in ROWS],
        )
    rows = [
        r["row"]
        for r in db.execute(
            sql.SQL("SELECT to_jsonb(x)::text AS row FROM {} x ORDER BY id").format(table)
        ).fetchall()
    ]
    return {**project, "rows": [orjson.loads(r) for r in rows]}


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_python_filters_match_sql(pg_url: str, things: dict[str, Any], data: Any) -> None:
    f = data.draw(filters())
    asyncio.run(_compare(pg_url, things, f))


def test_filter_comparisons_were_made() -> None:
    """Runs after the property test (file order): it compared for real."""
    if not any(COUNTS.values()):
        pytest.skip("the property test did not run in this session")
    print(f"differential filter checks: {COUNTS}")
    assert COUNTS["compared"] >= 100 and COUNTS["matching_some"] >= 30


async def _compare(pg_url: str, things: dict[str, Any], f: dict[str, Any]) -> None:
    principal = Principal("server")
    query = contract.parse_query_body(
        {"query": {"operation": "select", "table": "things", "columns": ["id"],
                   "filters": [f], "limit": 1000}}
    )  # fmt: skip
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        catalog = await load_catalog(conn, things["id"])
        try:
            statement = compile_query(query, catalog, principal)
            (result,) = await run_transaction(
                conn, [statement], role=things["schema_name"], statement_timeout_ms=5000
            )
        except GatewayError:
            COUNTS["refused_by_sql"] += 1
            return  # the query API refuses it: nothing to compare
    want = sorted(r["id"] for r in orjson.loads(result.data_json or "[]"))
    info = catalog.table("things")
    assert info is not None
    types = {c.name: c.data_type for c in info.columns}
    flt = contract.parse_filters([f])
    try:
        predicate, _ = compile_filters(flt, types)
    except GatewayError as exc:
        if types[f["column"]] == "jsonb" and f["op"] in ("gt", "gte", "lt", "lte"):
            return  # documented: jsonb ordering is refused by realtime filters
        raise AssertionError(f"realtime refuses {f} ({exc.code}) that SQL accepts") from exc
    got = sorted(r["id"] for r in things["rows"] if predicate(r))
    assert got == want, f"{f}: python {got} != sql {want}"
    COUNTS["compared"] += 1
    COUNTS["matching_some"] += bool(want)
