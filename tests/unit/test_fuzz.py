"""Property: any contract dict, however wrong, compiles or fails with a 4xx GatewayError."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.query.compiler import compile_query
from gateway.query.contract import parse_batch_body, parse_query_body
from tests.support.contract_strategies import json_values, queries, shaped_queries
from tests.support.example_catalog import (
    ADMIN,
    CATALOG,
    NO_SCOPES,
    PUBLIC,
    PUBLIC_WRITE_ONLY,
    SERVER,
)

PRINCIPALS = [SERVER, PUBLIC, ADMIN, PUBLIC_WRITE_ONLY, NO_SCOPES]


def _check(body: Any) -> None:
    for principal in PRINCIPALS:
        try:
            for query in parse_batch_body(body) if "queries" in body else [parse_query_body(body)]:
                statement = compile_query(query, CATALOG, principal)
                assert statement.text.count("%s") == len(statement.params)
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
