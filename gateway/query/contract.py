"""The JSON query contract, parsed into frozen values before anything else looks at it.

Parsing is total: whatever JSON (or Python object) arrives, the result is a ``Query`` or a
``GatewayError`` with a 4xx status whose message and ``details.field`` name the bad field
(``query.filters[2].op``). Nothing here knows the catalog: table and column names are
only checked for shape, so a name like ``todos; drop table x`` survives parsing and is
then simply not found by the permissions step (identifiers never come from the request).

Values are kept as JSON values; the compiler converts them per column type. This module
only rejects what can never be valid anywhere: NUL characters (PostgreSQL text and jsonb
cannot hold them), non-finite floats, absurd nesting, and wrong JSON types.

``bool`` is a subclass of ``int`` in Python, so every integer check excludes it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import GatewayError

Operation = Literal["select", "insert", "update", "delete"]
OPERATIONS: frozenset[str] = frozenset({"select", "insert", "update", "delete"})
FILTER_OPS: frozenset[str] = frozenset(
    {
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
    }
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 100_000
# maxRows is bound as an integer parameter.
MAX_MAX_ROWS = 2**31 - 1
# Caps that keep one request from compiling into an absurd statement; the body is
# already capped at 256 KB, these only bound the work per request.
MAX_FILTERS = 100
MAX_SORTS = 32
MAX_COLUMNS = 1000
MAX_INSERT_ROWS = 1000
MAX_BATCH = 20
MAX_IDENTIFIER_CHARS = 256
MAX_VALUE_DEPTH = 32
# Filter values whose cost grows with their size (docs/query-api.md "Filter value bounds").
# PostgreSQL checks for cancellation between rows, not inside one jsonb @> / array &&
# comparison, which costs (value elements) x (row elements): measured 0.2 s for 100
# elements against the largest row a 256 KB body can write, so these caps keep every
# statement cancellable within ~statement_timeout + 1 s. The containment and pattern
# caps are totals over one filter list: several filters on the same row add up.
MAX_IN_VALUES = 1000
MAX_CONTAINMENT_ELEMENTS = 100
MAX_CONTAINMENT_BYTES = 8192
MAX_PATTERN_CHARS = 256
MAX_PATTERN_WILDCARDS = 32
CONTAINMENT_OPS: frozenset[str] = frozenset({"contains", "containedBy", "overlaps"})
# NUL cannot be stored in text or jsonb; lone surrogates (which Python's json accepts
# from "\ud800" escapes) cannot be encoded to UTF-8 for the server or the response.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Filter:
    column: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class Sort:
    column: str
    descending: bool = False
    nulls_first: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """One parsed query.

    ``columns``/``returning`` are ``None`` when absent or ``["*"]`` (meaning: every
    column the key may read). ``data`` is always a tuple of rows (one for a single-object
    insert) whose key sets are identical; ``data_columns`` is that key set, in the order
    of the first row. ``field`` is the path prefix used in error messages.
    """

    operation: Operation
    table: str
    columns: tuple[str, ...] | None = None
    filters: tuple[Filter, ...] = ()
    sorts: tuple[Sort, ...] = ()
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    data: tuple[dict[str, Any], ...] | None = None
    data_columns: tuple[str, ...] = ()
    set: tuple[tuple[str, Any], ...] | None = None
    returning: tuple[str, ...] | None = None
    max_rows: int | None = None
    field: str = "query"


def _invalid(code: str, field: str, message: str) -> GatewayError:
    return GatewayError(code, f"{field}: {message}", details={"field": field})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(value: object, field: str, depth: int = 0) -> None:
    """Reject JSON values no column could ever hold; iterative depth is bounded."""
    if depth > MAX_VALUE_DEPTH:
        raise _invalid("INVALID_VALUE", field, "value is nested too deeply")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid("INVALID_VALUE", field, "numbers must be finite")
        return
    if isinstance(value, str):
        if _BAD_TEXT.search(value):
            raise _invalid(
                "INVALID_VALUE", field, "strings must not contain NUL or lone surrogates"
            )
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{field}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _invalid("INVALID_VALUE", field, "object keys must be strings")
            if _BAD_TEXT.search(key):
                raise _invalid(
                    "INVALID_VALUE", field, "keys must not contain NUL or lone surrogates"
                )
            _check_value(item, f"{field}.{key}", depth + 1)
        return
    raise _invalid("INVALID_VALUE", field, "not a JSON value")


def _json_nodes(value: object) -> int:
    """How many JSON values ``value`` holds, nested ones included (the comparison's size)."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return count


def _json_bytes(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _wildcards(pattern: str) -> int:
    """Unescaped ``%`` and ``_`` in a LIKE pattern (backslash is LIKE's default escape)."""
    count = 0
    escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "%_":
            count += 1
    return count


def _bound_error(field: str, message: str, bound: str, limit: int) -> GatewayError:
    return GatewayError(
        "INVALID_FILTER",
        f"{field}: {message}",
        details={"field": field, "bound": bound, "limit": limit},
    )


class _FilterBudget:
    """The size bounds of one filter list: per value, and totals where costs add up per row."""

    def __init__(self) -> None:
        self.containment_elements = 0
        self.pattern_chars = 0
        self.pattern_wildcards = 0

    def check(self, op: str, value: object, field: str) -> None:
        if op == "in":
            assert isinstance(value, list)
            if len(value) > MAX_IN_VALUES:
                raise _bound_error(
                    field,
                    f'an "in" list may have at most {MAX_IN_VALUES} values',
                    "inValues",
                    MAX_IN_VALUES,
                )
        elif op in ("like", "ilike"):
            assert isinstance(value, str)
            self.pattern_chars += len(value)
            self.pattern_wildcards += _wildcards(value)
            if self.pattern_chars > MAX_PATTERN_CHARS:
                raise _bound_error(
                    field,
                    f"like/ilike patterns may have at most {MAX_PATTERN_CHARS} characters"
                    " (all patterns of the query together)",
                    "patternChars",
                    MAX_PATTERN_CHARS,
                )
            if self.pattern_wildcards > MAX_PATTERN_WILDCARDS:
                raise _bound_error(
                    field,
                    f"like/ilike patterns may have at most {MAX_PATTERN_WILDCARDS} wildcards"
                    " (% and _, all patterns of the query together)",
                    "patternWildcards",
                    MAX_PATTERN_WILDCARDS,
                )
        elif op in CONTAINMENT_OPS:
            # the outer array or object itself is not an element
            elements = _json_nodes(value) - (1 if isinstance(value, list | dict) else 0)
            self.containment_elements += elements
            if self.containment_elements > MAX_CONTAINMENT_ELEMENTS:
                raise _bound_error(
                    field,
                    f"a {op} value may have at most {MAX_CONTAINMENT_ELEMENTS} elements"
                    " (nested ones included, all contains/containedBy/overlaps values of"
                    " the query together)",
                    "containmentElements",
                    MAX_CONTAINMENT_ELEMENTS,
                )
            if _json_bytes(value) > MAX_CONTAINMENT_BYTES:
                raise _bound_error(
                    field,
                    f"a {op} value may have at most {MAX_CONTAINMENT_BYTES} bytes as JSON",
                    "containmentBytes",
                    MAX_CONTAINMENT_BYTES,
                )


def _identifier(value: object, field: str, code: str = "INVALID_QUERY") -> str:
    if not isinstance(value, str):
        raise _invalid(code, field, "must be a string")
    if not value:
        raise _invalid(code, field, "must not be empty")
    if len(value) > MAX_IDENTIFIER_CHARS:
        raise _invalid(code, field, "is too long")
    if _BAD_TEXT.search(value):
        raise _invalid(code, field, "must not contain NUL characters or lone surrogates")
    return value


def _int_field(value: object, field: str, lo: int, hi: int) -> int:
    if not _is_int(value):
        raise _invalid("INVALID_QUERY", field, "must be an integer")
    assert isinstance(value, int)
    if value < lo or value > hi:
        raise _invalid("INVALID_QUERY", field, f"must be between {lo} and {hi}")
    return value


def _column_list(value: object, field: str) -> tuple[str, ...] | None:
    """A list of names, or ``None`` for "every readable column" (absent, [] or ["*"])."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid("INVALID_QUERY", field, 'must be an array of column names or ["*"]')
    if len(value) > MAX_COLUMNS:
        raise _invalid("INVALID_QUERY", field, f"at most {MAX_COLUMNS} columns")
    names: list[str] = []
    for i, item in enumerate(value):
        names.append(_identifier(item, f"{field}[{i}]", "INVALID_COLUMN"))
    if "*" in names:
        if len(names) != 1:
            raise _invalid("INVALID_COLUMN", field, '"*" cannot be combined with names')
        return None
    if not names:
        return None
    # Duplicates would produce duplicate JSON keys; keep the first occurrence.
    return tuple(dict.fromkeys(names))


def _filters(value: object, field: str) -> tuple[Filter, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid("INVALID_QUERY", field, "must be an array")
    if len(value) > MAX_FILTERS:
        raise _invalid("INVALID_QUERY", field, f"at most {MAX_FILTERS} filters")
    out: list[Filter] = []
    budget = _FilterBudget()
    for i, item in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise _invalid("INVALID_FILTER", f, "must be an object {column, op, value}")
        column = _identifier(item.get("column"), f"{f}.column", "INVALID_FILTER")
        op = item.get("op")
        if not isinstance(op, str) or op not in FILTER_OPS:
            raise _invalid(
                "INVALID_FILTER", f"{f}.op", f"must be one of {', '.join(sorted(FILTER_OPS))}"
            )
        if "value" not in item and op != "is":
            raise _invalid("INVALID_FILTER", f"{f}.value", "is required")
        val = item.get("value")
        vfield = f"{f}.value"
        _check_value(val, vfield)
        if op == "in":
            if not isinstance(val, list):
                raise _invalid("INVALID_FILTER", vfield, '"in" takes an array')
        elif op == "is":
            if not (val is None or isinstance(val, bool)):
                raise _invalid("INVALID_FILTER", vfield, '"is" takes only null, true or false')
        elif op in ("like", "ilike"):
            if not isinstance(val, str):
                raise _invalid("INVALID_FILTER", vfield, f'"{op}" takes a string pattern')
        elif val is None:
            raise _invalid("INVALID_FILTER", vfield, f'"{op}" cannot compare with null; use "is"')
        budget.check(op, val, vfield)
        out.append(Filter(column, op, val))
    return tuple(out)


def _sorts(value: object, field: str) -> tuple[Sort, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid("INVALID_QUERY", field, "must be an array")
    if len(value) > MAX_SORTS:
        raise _invalid("INVALID_QUERY", field, f"at most {MAX_SORTS} sorts")
    out: list[Sort] = []
    for i, item in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise _invalid("INVALID_QUERY", f, "must be an object {column, direction}")
        column = _identifier(item.get("column"), f"{f}.column", "INVALID_COLUMN")
        direction = item.get("direction", "asc")
        if direction is None:
            direction = "asc"
        if direction not in ("asc", "desc"):
            raise _invalid("INVALID_QUERY", f"{f}.direction", 'must be "asc" or "desc"')
        nulls_first = item.get("nullsFirst", False)
        if nulls_first is None:
            nulls_first = False
        if not isinstance(nulls_first, bool):
            raise _invalid("INVALID_QUERY", f"{f}.nullsFirst", "must be a boolean")
        out.append(Sort(column, direction == "desc", nulls_first))
    return tuple(out)


def _row(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid("INVALID_QUERY", field, "must be an object of column values")
    if len(value) > MAX_COLUMNS:
        raise _invalid("INVALID_QUERY", field, f"at most {MAX_COLUMNS} columns")
    for key, item in value.items():
        _identifier(key, field, "INVALID_COLUMN")
        _check_value(item, f"{field}.{key}")
    return dict(value)


def _data(value: object, field: str) -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    if isinstance(value, dict):
        row = _row(value, field)
        return (row,), tuple(row)
    if not isinstance(value, list):
        raise _invalid("INVALID_QUERY", field, "must be an object or an array of objects")
    if not value:
        raise _invalid("INVALID_QUERY", field, "must not be an empty array")
    if len(value) > MAX_INSERT_ROWS:
        raise _invalid("INVALID_QUERY", field, f"at most {MAX_INSERT_ROWS} rows")
    rows = tuple(_row(item, f"{field}[{i}]") for i, item in enumerate(value))
    keys = tuple(rows[0])
    key_set = set(keys)
    if not keys and len(rows) > 1:
        raise _invalid("INVALID_QUERY", field, "bulk rows must name at least one column")
    for i, row in enumerate(rows):
        if set(row) != key_set:
            raise _invalid(
                "INVALID_QUERY", f"{field}[{i}]", "every row must have the same keys as row 0"
            )
    return rows, keys


def parse_query(obj: object, field: str = "query") -> Query:
    """Parse one bare query object; ``field`` prefixes the paths in error messages."""
    if not isinstance(obj, dict):
        raise _invalid("INVALID_QUERY", field, "must be an object")
    operation = obj.get("operation")
    if operation is None:
        raise _invalid("INVALID_QUERY", f"{field}.operation", "is required")
    if not isinstance(operation, str) or operation not in OPERATIONS:
        raise _invalid(
            "INVALID_OPERATION",
            f"{field}.operation",
            "must be one of select, insert, update, delete",
        )
    if obj.get("table") is None:
        raise _invalid("INVALID_QUERY", f"{field}.table", "is required")
    table = _identifier(obj["table"], f"{field}.table", "INVALID_TABLE")

    columns = _column_list(obj.get("columns"), f"{field}.columns")
    filters = _filters(obj.get("filters"), f"{field}.filters")
    sorts = _sorts(obj.get("sorts"), f"{field}.sorts")
    limit_raw = obj.get("limit")
    limit = (
        DEFAULT_LIMIT
        if limit_raw is None
        else _int_field(limit_raw, f"{field}.limit", 0, MAX_LIMIT)
    )
    offset_raw = obj.get("offset")
    offset = 0 if offset_raw is None else _int_field(offset_raw, f"{field}.offset", 0, MAX_OFFSET)
    returning = _column_list(obj.get("returning"), f"{field}.returning")
    max_rows_raw = obj.get("maxRows")
    max_rows = (
        None
        if max_rows_raw is None
        else _int_field(max_rows_raw, f"{field}.maxRows", 1, MAX_MAX_ROWS)
    )

    data: tuple[dict[str, Any], ...] | None = None
    data_columns: tuple[str, ...] = ()
    set_: tuple[tuple[str, Any], ...] | None = None
    if operation == "insert":
        if obj.get("data") is None:
            raise _invalid("INVALID_QUERY", f"{field}.data", "is required for insert")
        data, data_columns = _data(obj["data"], f"{field}.data")
    elif operation == "update":
        raw_set = obj.get("set")
        if raw_set is None:
            raise _invalid("INVALID_QUERY", f"{field}.set", "is required for update")
        row = _row(raw_set, f"{field}.set")
        if not row:
            raise _invalid("INVALID_QUERY", f"{field}.set", "must name at least one column")
        set_ = tuple(row.items())

    return Query(
        operation=operation,  # type: ignore[arg-type]
        table=table,
        columns=columns,
        filters=filters,
        sorts=sorts,
        limit=limit,
        offset=offset,
        data=data,
        data_columns=data_columns,
        set=set_,
        returning=returning,
        max_rows=max_rows,
        field=field,
    )


def parse_query_body(body: object) -> Query:
    """The ``/query`` body: ``{"query": {...}}``."""
    if not isinstance(body, dict):
        raise _invalid("INVALID_QUERY", "body", 'must be an object {"query": {...}}')
    if "query" not in body:
        raise _invalid("INVALID_QUERY", "query", "is required")
    return parse_query(body["query"], "query")


def parse_batch_body(body: object) -> list[Query]:
    """The ``/batch`` body: ``{"queries": [<query>, ...]}`` with 1 to 20 bare queries."""
    if not isinstance(body, dict):
        raise _invalid("INVALID_QUERY", "body", 'must be an object {"queries": [...]}')
    queries = body.get("queries")
    if not isinstance(queries, list):
        raise _invalid("INVALID_QUERY", "queries", "must be an array of queries")
    if not 1 <= len(queries) <= MAX_BATCH:
        raise _invalid("INVALID_QUERY", "queries", f"must hold 1 to {MAX_BATCH} queries")
    return [parse_query(q, f"queries[{i}]") for i, q in enumerate(queries)]


def parse_filters(value: object, field: str = "filters") -> tuple[Filter, ...]:
    """A filter array on its own (the realtime endpoint's ``filters`` parameter)."""
    return _filters(value, field)
