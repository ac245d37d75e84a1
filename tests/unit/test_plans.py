"""Compile once: a plan per (catalog, query shape), values bound per request, exactly as a
fresh compile would bind and refuse them."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from gateway.errors import GatewayError
from gateway.metadata.catalog import ColumnInfo, Principal, ProjectCatalog
from gateway.metadata.plancache import MAX_PLAN_WEIGHT, MAX_PLANS, PlanCache
from gateway.query.compiler import CompiledStatement, compile_query
from gateway.query.contract import parse_batch_body, parse_query
from tests.support.contract_strategies import shaped_queries
from tests.support.example_catalog import CATALOG, PUBLIC, SERVER, TODOS
from tests.unit.test_owner_rules import ME, OTHER
from tests.unit.test_owner_rules import catalog as owner_rules_catalog


def fresh(catalog: ProjectCatalog = CATALOG) -> ProjectCatalog:
    """The same metadata as a new catalog object: an empty plan cache."""
    return ProjectCatalog(catalog.project_id, catalog.schema_name, dict(catalog.tables))


def compile_(
    obj: dict[str, Any], catalog: ProjectCatalog, principal: Principal = SERVER
) -> CompiledStatement:
    return compile_query(parse_query(obj), catalog, principal)


def by_pk(value: Any) -> dict[str, Any]:
    return {
        "operation": "select",
        "table": "todos",
        "filters": [{"column": "id", "op": "eq", "value": value}],
    }


def outcome(obj: dict[str, Any], catalog: ProjectCatalog, principal: Principal) -> Any:
    """What parsing and compiling answer: the statement, or the refusal as the client
    sees it."""
    try:
        st = compile_(obj, catalog, principal)
    except GatewayError as e:
        return ("error", e.code, e.status, str(e), e.details)
    return ("ok", st.text, st.params, st.operation, st.table, st.max_rows)


def test_the_same_shape_reuses_the_plan_and_its_text() -> None:
    catalog = fresh()
    first = compile_(by_pk(1), catalog)
    second = compile_(by_pk(2), catalog)
    assert second.text is first.text  # one string object: the plan's
    assert first.params != second.params
    assert [p for p in first.params if p not in (1, 2)] == [
        p for p in second.params if p not in (1, 2)
    ]
    assert len(catalog.plans) == 1 and catalog.plans.hits == 1


def test_values_limits_and_offsets_are_parameters_not_shape() -> None:
    catalog = fresh()
    a = compile_({**by_pk(1), "limit": 5, "offset": 0}, catalog)
    b = compile_({**by_pk(7), "limit": 50, "offset": 20}, catalog)
    assert a.text == b.text and len(catalog.plans) == 1
    assert 5 in a.params and 50 in b.params and 20 in b.params
    # a fresh compile of the second request binds exactly what the plan bound
    assert compile_({**by_pk(7), "limit": 50, "offset": 20}, fresh()).params == b.params


def test_what_changes_the_text_is_a_new_shape() -> None:
    catalog = fresh()
    texts = {
        compile_(by_pk(1), catalog).text,
        compile_({**by_pk(1), "columns": ["id"]}, catalog).text,
        compile_({**by_pk(1), "filters": [{"column": "id", "op": "gt", "value": 1}]}, catalog).text,
        compile_(
            {**by_pk(1), "filters": [{"column": "done", "op": "is", "value": True}]}, catalog
        ).text,
        compile_(
            {**by_pk(1), "filters": [{"column": "done", "op": "is", "value": None}]}, catalog
        ).text,
        compile_({**by_pk(1), "sorts": [{"column": "id"}]}, catalog).text,
    }
    assert len(texts) == 6 == len(catalog.plans)


def test_a_metadata_change_gives_a_new_plan() -> None:
    catalog = fresh()
    before = compile_({"operation": "select", "table": "todos"}, catalog)
    wider = dataclasses.replace(TODOS, columns=(*TODOS.columns, ColumnInfo("extra", "text")))
    # made from the warm catalog: it must not inherit the warm catalog's plans
    changed = dataclasses.replace(catalog, tables={**CATALOG.tables, "todos": wider})
    after = compile_({"operation": "select", "table": "todos"}, changed)
    assert '"extra"' in after.text and '"extra"' not in before.text
    dropped = ProjectCatalog(
        CATALOG.project_id,
        CATALOG.schema_name,
        {n: t for n, t in CATALOG.tables.items() if n != "todos"},
    )
    with pytest.raises(GatewayError) as e:
        compile_({"operation": "select", "table": "todos"}, dropped)
    assert e.value.code == "TABLE_NOT_FOUND"


def test_the_cache_stays_within_its_bounds_under_endless_shapes() -> None:
    catalog = fresh()
    readable = ["id", "title", "done", "tags", "meta", "created_at", "ext_id", "price"]
    shapes = [
        {**by_pk(1), "columns": [a, b], "filters": [{"column": "id", "op": op, "value": 1}]}
        for a in readable
        for b in readable
        if a != b
        for op in ("eq", "neq", "gt", "lt", "gte", "lte")
    ]
    assert len(shapes) > MAX_PLANS + 50
    for obj in shapes:
        compile_(obj, catalog)
    assert len(catalog.plans) == MAX_PLANS
    assert catalog.plans.weight <= MAX_PLAN_WEIGHT
    # a client sending large statements meets the weight bound first
    for i in range(MAX_PLANS):
        compile_(
            {
                **by_pk(1),
                "filters": [{"column": "id", "op": "eq", "value": 1}] * 50,
                "limit": 1,
                "columns": [readable[i % 8]],
                "sorts": [{"column": "id"}] * (i // 8 + 1),
            },
            catalog,
        )
    assert catalog.plans.weight <= MAX_PLAN_WEIGHT
    small = PlanCache(max_entries=100, max_weight=10_000)
    for i in range(50):
        small.put(i, object(), 1_000)
    assert len(small) == 10 and small.weight == 10_000
    small.put("huge", object(), 20_000)  # heavier than the whole budget: not kept
    assert small.get("huge") is None and len(small) == 10
    assert small.get(49) is not None and small.get(39) is None  # least recently used went


def test_a_refused_shape_is_not_kept() -> None:
    catalog = fresh()
    with pytest.raises(GatewayError):
        compile_({**by_pk(1), "columns": ["nope"]}, catalog)
    with pytest.raises(GatewayError):
        compile_(by_pk("not a number"), catalog)
    assert len(catalog.plans) == 0
    compile_(by_pk(1), catalog)
    assert len(catalog.plans) == 1


# Requests of one shape each, the first valid: every later one must get from the plan
# exactly what a fresh compile answers (statement or refusal, message and details).
SAME_SHAPE: list[list[dict[str, Any]]] = [
    [by_pk(1), by_pk("x"), by_pk(2**70), by_pk(None), by_pk("12")],
    [
        {
            "operation": "select",
            "table": "todos",
            "filters": [
                {"column": "priority", "op": "in", "value": [1, 2]},
                {"column": "tags", "op": "contains", "value": ["a"]},
                {"column": "title", "op": "like", "value": "a%"},
            ],
        },
        {
            "operation": "select",
            "table": "todos",
            "filters": [
                {"column": "priority", "op": "in", "value": ["x", 2]},
                {"column": "tags", "op": "contains", "value": [1]},
                {"column": "title", "op": "like", "value": "b%"},
            ],
        },
        {
            "operation": "select",
            "table": "todos",
            "filters": [
                {"column": "priority", "op": "in", "value": [1]},
                {"column": "tags", "op": "contains", "value": "notalist"},
                {"column": "title", "op": "like", "value": "b%"},
            ],
        },
    ],
    [
        {
            "operation": "insert",
            "table": "todos",
            "data": {"title": "a", "done": True, "due": "2024-01-02"},
        },
        {
            "operation": "insert",
            "table": "todos",
            "data": {"title": "b", "done": "yes", "due": "bad"},
        },
        {
            "operation": "insert",
            "table": "todos",
            "data": {"title": "c", "done": False, "due": "bad"},
        },
    ],
    [
        {
            "operation": "insert",
            "table": "todos",
            "data": [{"title": "a", "rank": 1}, {"title": "b", "rank": 2}],
        },
        {
            "operation": "insert",
            "table": "todos",
            "data": [{"title": "a", "rank": 1}, {"title": "b", "rank": 2**40}],
        },
    ],
    [
        {
            "operation": "update",
            "table": "todos",
            "set": {"title": "t", "price": "1.5"},
            "filters": [{"column": "id", "op": "eq", "value": 1}],
            "maxRows": 3,
        },
        {
            "operation": "update",
            "table": "todos",
            "set": {"title": "u", "price": "x"},
            "filters": [{"column": "id", "op": "eq", "value": "y"}],
            "maxRows": 9,
        },
        {
            "operation": "update",
            "table": "todos",
            "set": {"title": "u", "price": "2"},
            "filters": [{"column": "id", "op": "eq", "value": 4}],
            "maxRows": 9,
        },
    ],
    [
        {
            "operation": "delete",
            "table": "todos",
            "filters": [{"column": "ext_id", "op": "eq", "value": ME}],
        },
        {
            "operation": "delete",
            "table": "todos",
            "filters": [{"column": "ext_id", "op": "eq", "value": "zz"}],
        },
    ],
]


@pytest.mark.parametrize("requests", SAME_SHAPE)
@pytest.mark.parametrize("principal", [SERVER, PUBLIC])
def test_a_cached_plan_answers_exactly_what_a_fresh_compile_answers(
    requests: list[dict[str, Any]], principal: Principal
) -> None:
    catalog = fresh()
    for obj in requests:
        assert outcome(obj, catalog, principal) == outcome(obj, fresh(), principal)
    if outcome(requests[0], fresh(), principal)[0] == "ok":
        assert len(catalog.plans) == 1


def owner_catalog() -> ProjectCatalog:
    return owner_rules_catalog("owner")


@pytest.mark.parametrize(
    "requests",
    [
        [
            {"operation": "insert", "table": "notes", "data": [{"body": "a"}, {"body": "b"}]},
            {"operation": "insert", "table": "notes", "data": [{"body": "c"}, {"body": "d"}]},
        ],
        [
            {
                "operation": "insert",
                "table": "notes",
                "data": [{"body": "a", "user_id": ME}, {"body": "b", "user_id": None}],
            },
            {
                "operation": "insert",
                "table": "notes",
                "data": [{"body": 1, "user_id": ME}, {"body": "b", "user_id": OTHER}],
            },
            {
                "operation": "insert",
                "table": "notes",
                "data": [{"body": "x", "user_id": OTHER}, {"body": "b", "user_id": ME}],
            },
        ],
        [
            {
                "operation": "update",
                "table": "notes",
                "set": {"body": "a", "user_id": ME},
                "filters": [{"column": "id", "op": "eq", "value": 1}],
            },
            {
                "operation": "update",
                "table": "notes",
                "set": {"body": 5, "user_id": OTHER},
                "filters": [{"column": "id", "op": "eq", "value": 1}],
            },
            {
                "operation": "update",
                "table": "notes",
                "set": {"body": "a", "user_id": OTHER},
                "filters": [{"column": "id", "op": "eq", "value": "x"}],
            },
        ],
        [
            {
                "operation": "select",
                "table": "notes",
                "filters": [{"column": "body", "op": "eq", "value": "a"}],
            },
            {
                "operation": "select",
                "table": "notes",
                "filters": [{"column": "body", "op": "eq", "value": "b"}],
            },
        ],
    ],
)
def test_owner_rows_bind_each_request_s_own_user(requests: list[dict[str, Any]]) -> None:
    catalog = owner_catalog()
    for user in (ME, OTHER):
        principal = Principal("public", user_id=user)
        for obj in requests:
            assert outcome(obj, catalog, principal) == outcome(obj, owner_catalog(), principal)
    # the statement is held to the user of each request, not of the first
    for user in (OTHER, ME):
        answer = outcome(requests[0], catalog, Principal("public", user_id=user))
        if answer[0] == "ok":
            assert uuid.UUID(user) in answer[2]


def test_batch_positions_are_their_own_shapes() -> None:
    catalog = fresh()
    queries = parse_batch_body({"queries": [by_pk(1), by_pk("bad")]})
    first = compile_query(queries[0], catalog, SERVER, in_batch=True)
    with pytest.raises(GatewayError) as e:
        compile_query(queries[1], catalog, SERVER, in_batch=True)
    assert e.value.details["field"] == "queries[1].filters[0].value"
    assert first.text == compile_query(queries[0], fresh(), SERVER, in_batch=True).text


WARM = fresh()  # shared by every example: later ones meet the plans of earlier ones


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shaped_queries)
def test_any_query_answers_from_a_warm_cache_what_a_fresh_compile_answers(
    query: dict[str, Any],
) -> None:
    for principal in (SERVER, PUBLIC, Principal("public", user_id=ME)):
        assert outcome(query, WARM, principal) == outcome(query, fresh(), principal)
