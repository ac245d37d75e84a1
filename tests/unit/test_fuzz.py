"""Property: any contract dict, however wrong, compiles or fails with a 4xx GatewayError."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.query.compiler import compile_query
from gateway.query.contract import FILTER_OPS, parse_batch_body, parse_query_body
from tests.support.example_catalog import (
    ADMIN,
    CATALOG,
    NO_SCOPES,
    PUBLIC,
    PUBLIC_WRITE_ONLY,
    SERVER,
)

PRINCIPALS = [SERVER, PUBLIC, ADMIN, PUBLIC_WRITE_ONLY, NO_SCOPES]
COLUMNS = sorted({c.name for t in CATALOG.tables.values() for c in t.columns})

junk_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=None)
    | st.sampled_from(["\x00", '"', "'", ";", "\ud800", "\udfff"]),
    max_size=12,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    junk_text,
    st.sampled_from(
        [
            "2024-01-01",
            "2024-01-01T00:00:00Z",
            "12345678-1234-5678-1234-567812345678",
            "1.5",
            "1e400",
            "-12",
            "NaN",
            "%a%",
        ]
    ),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(junk_text | st.sampled_from(COLUMNS), children, max_size=4)
    ),
    max_leaves=12,
)
column_names = st.sampled_from(COLUMNS) | junk_text | st.just("*")
maybe_junk = json_values  # any field may hold any JSON value

filters = st.fixed_dictionaries(
    {},
    optional={
        "column": column_names | maybe_junk,
        "op": st.sampled_from(sorted(FILTER_OPS)) | maybe_junk,
        "value": json_values,
    },
)
sorts = st.fixed_dictionaries(
    {},
    optional={
        "column": column_names | maybe_junk,
        "direction": st.sampled_from(["asc", "desc"]) | maybe_junk,
        "nullsFirst": st.booleans() | maybe_junk,
    },
)
rows = st.dictionaries(column_names, json_values, max_size=4)
queries = st.fixed_dictionaries(
    {},
    optional={
        "operation": st.sampled_from(["select", "insert", "update", "delete"]) | maybe_junk,
        "table": st.sampled_from(sorted(CATALOG.tables)) | junk_text | maybe_junk,
        "columns": st.lists(column_names, max_size=4) | maybe_junk,
        "filters": st.lists(filters, max_size=4) | maybe_junk,
        "sorts": st.lists(sorts, max_size=3) | maybe_junk,
        "limit": st.integers(-5, 2000) | maybe_junk,
        "offset": st.integers(-5, 200000) | maybe_junk,
        "data": rows | st.lists(rows, max_size=3) | maybe_junk,
        "set": rows | maybe_junk,
        "returning": st.lists(column_names, max_size=4) | maybe_junk,
        "maxRows": st.integers(-5, 100) | maybe_junk,
    },
)

# Mostly well-shaped queries with hostile values, so that most examples reach the compiler.
good_columns = st.sampled_from(COLUMNS)
good_filters = st.fixed_dictionaries(
    {
        "column": good_columns,
        "op": st.sampled_from(sorted(FILTER_OPS)),
        "value": json_values | st.lists(scalars, max_size=3),
    }
)
good_rows = st.dictionaries(good_columns, json_values | st.lists(scalars, max_size=3), max_size=4)
shaped_queries = st.fixed_dictionaries(
    {
        "operation": st.sampled_from(["select", "insert", "update", "delete"]),
        "table": st.sampled_from(["todos", "notes", "comments", "writeonly", "readonly"]),
    },
    optional={
        "columns": st.lists(good_columns, max_size=4),
        "filters": st.lists(good_filters, min_size=1, max_size=3),
        "sorts": st.lists(
            st.fixed_dictionaries(
                {"column": good_columns},
                optional={
                    "direction": st.sampled_from(["asc", "desc"]),
                    "nullsFirst": st.booleans(),
                },
            ),
            max_size=2,
        ),
        "limit": st.integers(0, 1000),
        "data": good_rows | st.lists(good_rows, min_size=1, max_size=3),
        "set": good_rows,
        "returning": st.lists(good_columns, max_size=3),
        "maxRows": st.integers(1, 100),
    },
)


def _check(body: Any) -> None:
    for principal in PRINCIPALS:
        try:
            for query in parse_batch_body(body) if "queries" in body else [parse_query_body(body)]:
                statement = compile_query(query, CATALOG, principal)
                assert statement.sql.as_string(None).count("%s") == len(statement.params)
        except GatewayError as err:
            assert 400 <= err.status < 500, err
            assert isinstance(err.message, str) and "\x00" not in err.message
            orjson.dumps(err.to_error())  # renderable: no lone surrogates in the answer


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queries)
def test_any_query_compiles_or_is_a_4xx(query: dict[str, Any]) -> None:
    _check({"query": query})


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shaped_queries)
def test_any_shaped_query_compiles_or_is_a_4xx(query: dict[str, Any]) -> None:
    _check({"query": query})


@settings(max_examples=300, deadline=None)
@given(st.lists(queries, max_size=3) | json_values)
def test_any_batch_compiles_or_is_a_4xx(queries_: Any) -> None:
    _check({"queries": queries_})


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_body_compiles_or_is_a_4xx(body: Any) -> None:
    _check({"query": body})
