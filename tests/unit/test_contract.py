"""Parsing the JSON query contract: shapes, defaults, and errors naming the bad field."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.query import contract as c
from gateway.query.contract import (
    Filter,
    Query,
    Sort,
    parse_batch_body,
    parse_filters,
    parse_query,
    parse_query_body,
)


def bad(obj: Any, code: str, field: str) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        parse_query(obj)
    err = info.value
    assert err.code == code, err
    assert 400 <= err.status < 500
    assert field in err.message, err.message
    assert err.details["field"].startswith(field)
    return err


def q(**kw: Any) -> dict[str, Any]:
    return {"operation": "select", "table": "todos", **kw}


def test_full_select_parses() -> None:
    query = parse_query(
        q(
            columns=["id", "title", "id"],
            filters=[{"column": "done", "op": "eq", "value": False}],
            sorts=[{"column": "created_at", "direction": "desc", "nullsFirst": True}],
            limit=10,
            offset=5,
        )
    )
    assert query == Query(
        operation="select",
        table="todos",
        columns=("id", "title"),
        filters=(Filter("done", "eq", False),),
        sorts=(Sort("created_at", descending=True, nulls_first=True),),
        limit=10,
        offset=5,
    )


def test_defaults() -> None:
    query = parse_query(q())
    assert query.columns is None and query.limit == 100 and query.offset == 0
    assert query.filters == () and query.sorts == () and query.max_rows is None
    assert parse_query(q(columns=["*"])).columns is None
    assert parse_query(q(columns=[])).columns is None
    assert parse_query(q(limit=None, offset=None, sorts=None)).limit == 100
    assert parse_query(q(sorts=[{"column": "a"}])).sorts == (Sort("a"),)


def test_body_wrappers() -> None:
    assert parse_query_body({"query": q()}).table == "todos"
    with pytest.raises(GatewayError) as info:
        parse_query_body(q())
    assert info.value.code == "INVALID_QUERY"
    for body in (None, [], "x", 1):
        with pytest.raises(GatewayError):
            parse_query_body(body)


def test_batch() -> None:
    queries = parse_batch_body({"queries": [q(), q(table="notes")]})
    assert [x.table for x in queries] == ["todos", "notes"]
    assert queries[1].field == "queries[1]"
    for body in ({"queries": []}, {"queries": [q()] * 21}, {"queries": q()}, {}, []):
        with pytest.raises(GatewayError) as info:
            parse_batch_body(body)
        assert info.value.code == "INVALID_QUERY"
    with pytest.raises(GatewayError) as info:
        parse_batch_body({"queries": [q(), q(limit="1")]})
    assert "queries[1].limit" in info.value.message


def test_operation_and_table_required() -> None:
    bad({"table": "t"}, "INVALID_QUERY", "query.operation")
    bad({"operation": "select"}, "INVALID_QUERY", "query.table")
    bad({"operation": "upsert", "table": "t"}, "INVALID_OPERATION", "query.operation")
    bad({"operation": ["select"], "table": "t"}, "INVALID_OPERATION", "query.operation")
    bad({"operation": "select", "table": 5}, "INVALID_TABLE", "query.table")
    bad({"operation": "select", "table": ""}, "INVALID_TABLE", "query.table")
    bad({"operation": "select", "table": "a\x00b"}, "INVALID_TABLE", "query.table")
    bad({"operation": "select", "table": "x" * 300}, "INVALID_TABLE", "query.table")
    bad("select", "INVALID_QUERY", "query")


@pytest.mark.parametrize("value", [True, False, 1.0, 10.5, "10", -1, 1001, 2**80, [1], None])
def test_limit_bounds_and_types(value: Any) -> None:
    if value is None:
        assert parse_query(q(limit=value)).limit == 100
        return
    bad(q(limit=value), "INVALID_QUERY", "query.limit")


def test_limit_edges() -> None:
    assert parse_query(q(limit=0)).limit == 0
    assert parse_query(q(limit=1000)).limit == 1000
    assert parse_query(q(offset=100000)).offset == 100000
    bad(q(offset=100001), "INVALID_QUERY", "query.offset")
    bad(q(offset=-1), "INVALID_QUERY", "query.offset")
    bad(q(offset=True), "INVALID_QUERY", "query.offset")
    bad(q(maxRows=0), "INVALID_QUERY", "query.maxRows")
    bad(q(maxRows=True), "INVALID_QUERY", "query.maxRows")
    bad(q(maxRows=2**40), "INVALID_QUERY", "query.maxRows")
    assert parse_query(q(maxRows=1)).max_rows == 1


def test_filters() -> None:
    bad(q(filters={"column": "a"}), "INVALID_QUERY", "query.filters")
    bad(q(filters=["a"]), "INVALID_FILTER", "query.filters[0]")
    flt = [{"column": "a", "op": "eq", "value": 1}] * 2 + [{"column": "a", "op": "regex"}]
    bad(q(filters=flt), "INVALID_FILTER", "query.filters[2].op")
    bad(
        q(filters=[{"column": 1, "op": "eq", "value": 1}]),
        "INVALID_FILTER",
        "query.filters[0].column",
    )
    bad(q(filters=[{"column": "a", "op": "eq"}]), "INVALID_FILTER", "query.filters[0].value")
    bad(
        q(filters=[{"column": "a", "op": "eq", "value": None}]),
        "INVALID_FILTER",
        "query.filters[0].value",
    )
    bad(
        q(filters=[{"column": "a", "op": "in", "value": 1}]),
        "INVALID_FILTER",
        "query.filters[0].value",
    )
    bad(
        q(filters=[{"column": "a", "op": "like", "value": 1}]),
        "INVALID_FILTER",
        "query.filters[0].value",
    )
    for value in (1, 0, 1.0, "null", "true", [], {}):
        bad(
            q(filters=[{"column": "a", "op": "is", "value": value}]),
            "INVALID_FILTER",
            "query.filters[0].value",
        )
    assert parse_query(q(filters=[{"column": "a", "op": "is"}])).filters[0].value is None
    assert parse_query(q(filters=[{"column": "a", "op": "in", "value": []}])).filters[0].value == []
    bad(
        q(filters=[{"column": "a", "op": "eq", "value": float("nan")}]),
        "INVALID_VALUE",
        "query.filters[0].value",
    )
    bad(
        q(filters=[{"column": "a", "op": "eq", "value": "x\x00"}]),
        "INVALID_VALUE",
        "query.filters[0].value",
    )
    bad(
        q(filters=[{"column": "a", "op": "eq", "value": {"k": ["\x00"]}}]),
        "INVALID_VALUE",
        "query.filters[0].value.k[0]",
    )
    bad(
        q(filters=[{"column": "a", "op": "eq", "value": {1: 2}}]),
        "INVALID_VALUE",
        "query.filters[0].value",
    )
    bad(
        q(filters=[{"column": "a", "op": "eq", "value": object()}]),
        "INVALID_VALUE",
        "query.filters[0].value",
    )


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    value: Any = 1
    for _ in range(5000):
        value = [value]
    bad(
        q(filters=[{"column": "a", "op": "eq", "value": value}]),
        "INVALID_VALUE",
        "query.filters[0].value",
    )


def test_sorts() -> None:
    bad(q(sorts=[{"column": "a", "direction": "up"}]), "INVALID_QUERY", "query.sorts[0].direction")
    bad(q(sorts=[{"column": "a", "nullsFirst": 1}]), "INVALID_QUERY", "query.sorts[0].nullsFirst")
    bad(q(sorts=[{"direction": "asc"}]), "INVALID_COLUMN", "query.sorts[0].column")
    bad(q(sorts="a"), "INVALID_QUERY", "query.sorts")


def test_columns() -> None:
    bad(q(columns="id"), "INVALID_QUERY", "query.columns")
    bad(q(columns=["id", 3]), "INVALID_COLUMN", "query.columns[1]")
    bad(q(columns=["*", "id"]), "INVALID_COLUMN", "query.columns")
    bad(q(columns=["a\x00"]), "INVALID_COLUMN", "query.columns[0]")


def test_insert_data() -> None:
    ins = {"operation": "insert", "table": "t"}
    query = parse_query({**ins, "data": {"a": 1, "b": None}})
    assert query.data == ({"a": 1, "b": None},) and query.data_columns == ("a", "b")
    query = parse_query({**ins, "data": [{"a": 1, "b": 2}, {"b": 3, "a": 4}]})
    assert query.data_columns == ("a", "b") and len(query.data or ()) == 2
    bad(ins, "INVALID_QUERY", "query.data")
    bad({**ins, "data": []}, "INVALID_QUERY", "query.data")
    bad({**ins, "data": "x"}, "INVALID_QUERY", "query.data")
    bad({**ins, "data": [{"a": 1}, 2]}, "INVALID_QUERY", "query.data[1]")
    bad({**ins, "data": [{"a": 1}, {"b": 1}]}, "INVALID_QUERY", "query.data[1]")
    bad({**ins, "data": [{}, {}]}, "INVALID_QUERY", "query.data")
    bad({**ins, "data": {"a": "\x00"}}, "INVALID_VALUE", "query.data.a")
    bad({**ins, "data": {"a\x00": 1}}, "INVALID_COLUMN", "query.data")
    bad({**ins, "data": [{"a": 1}] * 1001}, "INVALID_QUERY", "query.data")


def test_update_set() -> None:
    upd = {
        "operation": "update",
        "table": "t",
        "filters": [{"column": "a", "op": "eq", "value": 1}],
    }
    assert parse_query({**upd, "set": {"a": 2}}).set == (("a", 2),)
    bad(upd, "INVALID_QUERY", "query.set")
    bad({**upd, "set": {}}, "INVALID_QUERY", "query.set")
    bad({**upd, "set": [1]}, "INVALID_QUERY", "query.set")
    bad({**upd, "set": {"a": float("inf")}}, "INVALID_VALUE", "query.set.a")


def test_returning() -> None:
    ins = {"operation": "insert", "table": "t", "data": {"a": 1}}
    assert parse_query({**ins, "returning": ["a"]}).returning == ("a",)
    assert parse_query({**ins, "returning": ["*"]}).returning is None
    bad({**ins, "returning": "a"}, "INVALID_QUERY", "query.returning")


def test_lone_surrogates_refused() -> None:
    bad(q(table="t\ud800"), "INVALID_TABLE", "query.table")
    flt = [{"column": "a", "op": "eq", "value": "x\udc00"}]
    bad(q(filters=flt), "INVALID_VALUE", "query.filters[0].value")
    ins = {"operation": "insert", "table": "t", "data": {"a": {"k\ud800": 1}}}
    bad(ins, "INVALID_VALUE", "query.data.a")


def _filter_error(*filters: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse_filters(list(filters))
    assert caught.value.code == "INVALID_FILTER" and caught.value.status == 400
    return caught.value


def test_filter_values_are_bounded_per_operator() -> None:
    at_bound = [
        {"column": "a", "op": "in", "value": [1] * c.MAX_IN_VALUES},
        {"column": "a", "op": "contains", "value": [1] * c.MAX_CONTAINMENT_ELEMENTS},
        {"column": "a", "op": "like", "value": "%_" * (c.MAX_PATTERN_WILDCARDS // 2)},
    ]
    assert len(parse_filters(at_bound)) == 3
    err = _filter_error({"column": "a", "op": "in", "value": [1] * (c.MAX_IN_VALUES + 1)})
    assert err.details == {"field": "filters[0].value", "bound": "inValues", "limit": 1000}
    err = _filter_error({"column": "a", "op": "overlaps", "value": [1] * 101})
    assert err.message.startswith("filters[0].value: a overlaps value may have at most 100")
    # nested elements count, and so do the values of every containment filter together
    err = _filter_error({"column": "a", "op": "contains", "value": {"k": [[1] * 60] * 2}})
    assert err.details["bound"] == "containmentElements"
    err = _filter_error(
        {"column": "a", "op": "contains", "value": [1] * 60},
        {"column": "b", "op": "containedBy", "value": [1] * 60},
    )
    assert err.details["field"] == "filters[1].value"
    err = _filter_error({"column": "a", "op": "contains", "value": ["x" * 9000]})
    assert err.details["bound"] == "containmentBytes"
    err = _filter_error({"column": "a", "op": "ilike", "value": "a" * 257})
    assert err.details["bound"] == "patternChars"
    err = _filter_error({"column": "a", "op": "like", "value": "%" * 33})
    assert err.details["bound"] == "patternWildcards"
    # escaped wildcards are literal characters, not wildcards
    assert parse_filters([{"column": "a", "op": "like", "value": "\\%" * 40}])
