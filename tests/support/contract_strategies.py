"""Hypothesis strategies for query contracts against the example catalog.

``queries`` is any shape at all (most fail parsing: the 4xx path); ``shaped_queries`` is
mostly well-shaped with hostile values, so most examples reach the compiler — and, in
tests/db, PostgreSQL.
"""

from __future__ import annotations

from hypothesis import strategies as st

from gateway.query.contract import FILTER_OPS
from tests.support.example_catalog import CATALOG

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
