"""The admin API's request models: property tests (hypothesis) and the OpenAPI document.

A model either accepts a body or raises ``ValidationError`` — never anything else — and
what it accepts is handed to the CLI's own parser (``tabledef``), which must then accept
it or refuse it with ``DefinitionError``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import example as keep_example
from hypothesis import strategies as st
from openapi_spec_validator import validate
from pydantic import BaseModel, ValidationError

from gateway.control import admin_models as m
from gateway.control import tabledef
from gateway.control.admin import ROUTES
from gateway.control.openapi import PARAM_DESCRIPTIONS, PARAM_RE, document

BODY_MODELS = [
    m.ProjectCreate,
    m.ProjectUpdate,
    m.ProjectDelete,
    m.KeyCreate,
    m.ColumnDefinition,
    m.TableDefinition,
    m.AccessUpdate,
    m.RealtimeUpdate,
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
FIELD_NAMES = [
    "name", "tier", "rate_limit_per_minute", "requests_per_day", "status", "confirm", "type",
    "scopes", "expires_in", "columns", "primary_key", "identity", "nullable", "default",
    "sensitive", "client_read", "client_write", "realtime", "column", "enabled",
]  # fmt: skip
shaped_objects = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=6)


@pytest.mark.parametrize("model", BODY_MODELS, ids=lambda model: model.__name__)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | shaped_objects)
def test_a_model_accepts_or_raises_validation_error(model: type[BaseModel], value: Any) -> None:
    raw = dumps(value)
    try:
        parsed = model.model_validate_json(raw)
    except ValidationError:
        return
    # what a model accepts survives a round trip unchanged
    assert model.model_validate_json(parsed.model_dump_json()) == parsed


def dumps(value: Any) -> bytes:
    """JSON text for any generated value (integers of any size included, as clients may send)."""
    return json.dumps(value).encode()


names = st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}\Z") | st.text(max_size=8)
types = st.sampled_from(
    ["text", "int", "bigint", "boolean", "jsonb", "uuid", "date", "timestamptz", "text[]",
     "numeric", "money", "jsonb[]", " Integer ", "double precision", ""]
)  # fmt: skip
defaults = st.none() | st.sampled_from(["now()", "gen_random_uuid()", "NOW()"]) | json_values
columns = st.fixed_dictionaries(
    {"name": names, "type": types},
    optional={
        "primary_key": st.booleans(),
        "identity": st.booleans(),
        "nullable": st.booleans(),
        "default": defaults,
        "sensitive": st.booleans(),
        "client_read": st.booleans(),
        "client_write": st.booleans(),
    },
)
tables = st.fixed_dictionaries(
    {"name": names, "columns": st.lists(columns, max_size=5)},
    optional={"client_read": st.booleans(), "realtime": st.booleans()},
)


@settings(max_examples=300, deadline=None)
@given(raw=tables)
def test_what_the_model_accepts_the_cli_parser_accepts_or_refuses_cleanly(
    raw: dict[str, Any],
) -> None:
    try:
        body = m.TableDefinition.model_validate_json(dumps(raw))
    except ValidationError:
        return
    try:
        table = tabledef.parse_table(body.as_args())
    except tabledef.DefinitionError as exc:
        assert str(exc)
        return
    assert table.name == raw["name"]
    assert [c.name for c in table.columns] == [c["name"] for c in raw["columns"]]
    tabledef.create_table_ddl("p_000000000000", table)  # builds without raising


@settings(max_examples=200, deadline=None)
@given(raw=columns)
# found by this test (issue 21's merge check): jsonb can't take an integer beyond 64 bits
@keep_example(raw={"name": "_", "type": "jsonb", "default": -9_223_372_036_854_775_809})
def test_column_bodies_reach_the_column_parser(raw: dict[str, Any]) -> None:
    try:
        body = m.ColumnDefinition.model_validate_json(dumps(raw))
    except ValidationError:
        return
    with contextlib.suppress(tabledef.DefinitionError):
        tabledef.parse_column(body.as_args(), "column")


@given(
    name=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z"),
    tier=st.sampled_from(["free", "starter", "growth", "scale", "enterprise"]),
    limit=st.none() | st.integers(min_value=0, max_value=2**31 - 1),
)
def test_valid_project_bodies_are_accepted(name: str, tier: str, limit: int | None) -> None:
    body: dict[str, Any] = {"name": name, "tier": tier}
    if limit is not None:
        body["rate_limit_per_minute"] = limit
    parsed = m.ProjectCreate.model_validate_json(dumps(body))
    assert parsed.as_args() == body


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (m.ProjectCreate, {"name": "a", "rate_limit_per_minute": "5"}),
        (m.ProjectCreate, {"name": "a", "rate_limit_per_minute": 5.0}),
        (m.RealtimeUpdate, {"enabled": "true"}),
        (m.RealtimeUpdate, {"enabled": 1}),
        (m.AccessUpdate, {"client_read": "no"}),
        (m.KeyCreate, {"type": "server", "unknown": 1}),
        (m.TableDefinition, {"name": "t", "columns": [{"name": "id", "type": "text", "x": 1}]}),
    ],
)
def test_bodies_are_strict(model: type[BaseModel], body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate_json(dumps(body))


def test_the_models_bounds_are_provisionings() -> None:
    from typing import get_args

    from gateway.control import projects
    from gateway.jobs import rules as job_rules
    from gateway.quotas import plans

    assert (m.MAX_LIMIT, m.PAGE_MAX) == (projects.MAX_LIMIT, projects.PAGE_MAX)
    assert projects.PROJECT_NAME_RE.pattern == m.PROJECT_NAME_PATTERN
    assert tabledef.NAME_RE.pattern == m.NAME_PATTERN
    assert plans.PLAN_NAME_RE.pattern == m.PLAN_NAME_PATTERN
    assert m.LIMIT_FIELDS == plans.PLAN_FIELDS
    assert (m.INT32_MAX, m.UNLIMITED) == (plans.INT32_MAX, plans.UNLIMITED)
    assert m.JOB_STATUSES == job_rules.STATUSES
    assert tuple(job_rules.ORDER_BY) == m.JOB_ORDER_BY
    assert (m.JOB_LIST_MAX, m.JOB_OFFSET_MAX, m.JOB_NAME_MAX) == (
        job_rules.LIST_LIMIT_MAX,
        job_rules.OFFSET_MAX,
        job_rules.NAME_MAX,
    )
    status = m.JobListQuery.model_fields["status"].annotation
    assert set(get_args(get_args(status)[0])) == {*job_rules.STATUSES, "all"}
    order_by = m.JobListQuery.model_fields["orderBy"].annotation
    assert get_args(order_by) == tuple(job_rules.ORDER_BY)


def test_query_strings_are_lax_but_bounded() -> None:
    assert m.ProjectListQuery.model_validate({"limit": "5"}).limit == 5
    for bad in ({"limit": "0"}, {"limit": "101"}, {"offset": "-1"}, {"page": "2"}):
        with pytest.raises(ValidationError):
            m.ProjectListQuery.model_validate(bad)


# --- the OpenAPI document ------------------------------------------------------------------


def test_the_document_is_valid_openapi_31_and_covers_every_route() -> None:
    doc = document(ROUTES)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    for route in ROUTES:
        operation = doc["paths"][route.full_path][route.method.lower()]
        assert str(route.status) in operation["responses"]
        assert {p["name"] for p in operation["parameters"] if p["in"] == "path"} == set(
            PARAM_RE.findall(route.path)
        )
        assert set(PARAM_RE.findall(route.path)) <= set(PARAM_DESCRIPTIONS)
        if route.body is not None:
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + route.body.__name__)
            assert route.body.__name__ in doc["components"]["schemas"]


@pytest.mark.parametrize("model", BODY_MODELS, ids=lambda model: model.__name__)
def test_every_body_model_has_examples_it_accepts(model: type[BaseModel]) -> None:
    examples = model.model_json_schema().get("examples")
    assert examples
    for example in examples:
        model.model_validate_json(dumps(example))
