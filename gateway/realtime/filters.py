"""Realtime filters: the query contract's operators evaluated in Python against a row image."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import (
    Callable,
    Iterable,
    Mapping,
)
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.realtime.events import Change
from gateway.realtime.like import like_matcher

# --- filters, evaluated in Python against the row image -----------------------------------


class FilterLike(Protocol):
    column: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class Filter:
    """The query contract's filter (``gateway.contract.Filter`` has the same shape)."""

    column: str
    op: str
    value: Any


FILTER_OPS = frozenset(
    {"eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is", "contains",
     "containedBy", "overlaps"}
)  # fmt: skip
_MISSING = object()


def _invalid_value(column: str, message: str) -> GatewayError:
    return GatewayError(
        "INVALID_VALUE",
        f"filter on '{column}': {message}",
        details={"column": column},
    )


class WrongJsonType(TypeError):
    """A filter value of the wrong JSON type for its column (an object for a uuid, ...):
    400 ``INVALID_FILTER``. A value of the right type that doesn't parse (``"five"`` for
    an integer) stays ``INVALID_VALUE``, as in ``/query``."""


def _expect(v: Any, types: tuple[type, ...], what: str) -> None:
    if isinstance(v, bool) and bool not in types:
        raise WrongJsonType(what)
    if not isinstance(v, types):
        raise WrongJsonType(what)


def _scalar_converter(base: str) -> Callable[[Any], Any]:
    def to_int(v: Any) -> int:
        _expect(v, (int, float, str), "a number")
        if isinstance(v, float) and not v.is_integer():
            raise ValueError("not an integer")
        return int(v)

    def to_decimal(v: Any) -> decimal.Decimal:
        _expect(v, (int, float, str), "a number")
        return decimal.Decimal(str(v))

    def to_bool(v: Any) -> bool:
        _expect(v, (bool, str), "a boolean")
        if isinstance(v, bool):
            return v
        if v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise ValueError("not a boolean")

    def to_datetime(v: Any) -> dt.datetime:
        _expect(v, (str,), "a string")
        value = dt.datetime.fromisoformat(v)
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    def to_date(v: Any) -> dt.date:
        _expect(v, (str,), "a string")
        return dt.date.fromisoformat(v)

    def to_uuid(v: Any) -> uuid.UUID:
        _expect(v, (str,), "a string")
        return uuid.UUID(v)

    def to_text(v: Any) -> str:
        _expect(v, (str,), "a string")
        return v

    return {
        "integer": to_int,
        "bigint": to_int,
        "smallint": to_int,
        "numeric": to_decimal,
        "real": to_decimal,
        "double precision": to_decimal,
        "boolean": to_bool,
        "timestamptz": to_datetime,
        "date": to_date,
        "uuid": to_uuid,
        "text": to_text,
    }.get(base, lambda v: v)  # jsonb and unknown types compare as JSON values


def _converter(data_type: str | None) -> tuple[Callable[[Any], Any], bool]:
    """(convert one value, is an array type)."""
    data_type = data_type or "jsonb"
    if data_type.endswith("[]"):
        return _scalar_converter(data_type[:-2]), True
    return _scalar_converter(data_type), False


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    return bool(a == b)


# The most work one filter may do on one row image (recursive containment steps plus
# elements hashed). Size bounds at parse time (the query contract) keep a filter small,
# but a jsonb value nested as objects inside arrays is compared element by element, and
# a row may hold 256 KB of them: the budget caps what one event can cost the instance
# (docs/realtime.md, "Filters: bounded work per event", has the measurement).
MAX_FILTER_STEPS = 50_000
# a scalar hashed into (or looked up in) a set costs about a quarter of a recursive
# containment step (measured: 50,000 nested steps 36-41 ms; 73,000 scalars hashed and
# looked up 17 ms), so it is counted as such: a 256 KB row holds at most 128,000
# scalars, which stays within the budget
HASHED_PER_STEP = 4


class FilterTooExpensive(GatewayError):
    """A filter needed more than ``MAX_FILTER_STEPS`` on one row: the stream ends with
    ``event: error`` ``FILTER_TOO_EXPENSIVE`` instead of holding the instance."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            "FILTER_TOO_EXPENSIVE",
            message
            or "the filter needs too much work on a row of this table: "
            "use a smaller contains/containedBy value or filter on a scalar column",
        )


class Budget:
    """Work left for one filter on one row (see ``MAX_FILTER_STEPS``)."""

    __slots__ = ("left",)

    def __init__(self, steps: int = MAX_FILTER_STEPS) -> None:
        self.left = steps

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise FilterTooExpensive()


_TRUE, _FALSE = object(), object()


def _scalar_key(x: Any) -> Any:
    """A hashable key under which jsonb scalars are equal exactly when ``_json_equal``
    says so: ``true`` is not ``1`` (Python says it is), ``1`` is ``1.0``."""
    if x is True:
        return _TRUE
    if x is False:
        return _FALSE
    return x


def _as_set(values: list[Any]) -> set[Any] | list[Any]:
    """Elements for membership tests: a set when they hash (every converted column type
    does), else the list itself (arrays of a type compared as JSON)."""
    try:
        return set(values)
    except TypeError:
        return values


def _is_container(x: Any) -> bool:
    return isinstance(x, (dict, list))


def jsonb_contains(a: Any, b: Any, budget: Budget | None = None) -> bool:
    """PostgreSQL's ``a @> b`` for jsonb values: scalar elements are hashed (linear in
    both sides); nested containers are compared pairwise within ``budget``."""
    if budget is None:
        budget = Budget()
    budget.spend(1)
    if isinstance(a, dict):
        return isinstance(b, dict) and all(
            k in a and jsonb_contains(a[k], v, budget) for k, v in b.items()
        )
    if isinstance(a, list):
        if isinstance(b, dict):
            return False
        if not isinstance(b, list):
            # a top-level array contains a scalar it holds as an element
            budget.spend(len(a) // HASHED_PER_STEP)
            return any(not _is_container(x) and _json_equal(x, b) for x in a)
        scalars = [y for y in b if not _is_container(y)]
        if scalars:
            budget.spend((len(a) + len(scalars)) // HASHED_PER_STEP)
            have = {_scalar_key(x) for x in a if not _is_container(x)}
            if not all(_scalar_key(y) in have for y in scalars):
                return False
        for y in b:
            if _is_container(y):
                kind = type(y)
                if not any(type(x) is kind and jsonb_contains(x, y, budget) for x in a):
                    return False
        return True
    return not _is_container(b) and _json_equal(a, b)


Predicate = Callable[[Mapping[str, Any]], bool]


def _array_key(values: list[Any]) -> list[tuple[Any, ...]]:
    return [(1,) if x is None else (0, x) for x in values]


def _compile_one(f: FilterLike, data_type: str | None) -> Predicate:
    column, op, value = f.column, f.op, f.value
    if op not in FILTER_OPS:
        raise GatewayError("INVALID_FILTER", f"unknown filter operator {op!r}")
    conv, is_array = _converter(data_type)
    is_json = (data_type or "jsonb") == "jsonb"

    def convert(v: Any) -> Any:
        try:
            return conv(v)
        except WrongJsonType as exc:
            raise GatewayError(
                "INVALID_FILTER",
                f"filter on '{column}': a {data_type} column compares with {exc}",
                details={"column": column},
            ) from None
        except (ValueError, TypeError, ArithmeticError):
            raise _invalid_value(column, f"the value is not a valid {data_type}") from None

    def row_value(row: Mapping[str, Any]) -> Any:
        v = row.get(column)
        if v is None:
            return None
        try:
            if is_array:
                return [None if x is None else conv(x) for x in v] if isinstance(v, list) else v
            return conv(v)
        except (ValueError, TypeError, ArithmeticError):
            return _MISSING

    if op == "is":
        if value is None:
            return lambda row: row.get(column) is None
        if not isinstance(value, bool):
            raise GatewayError(
                "INVALID_FILTER", f"filter on '{column}': is takes null, true or false"
            )
        return lambda row: row.get(column) is value

    if op in ("like", "ilike"):
        if not isinstance(value, str):
            raise GatewayError("INVALID_FILTER", f"filter on '{column}': {op} takes a string")
        matcher = like_matcher(value, op == "ilike")

        def like(row: Mapping[str, Any]) -> bool:
            v = row.get(column)
            return isinstance(v, str) and matcher(v)

        return like

    if value is None:
        raise GatewayError("INVALID_FILTER", f"filter on '{column}': {op} can't compare with null")

    if op == "in":
        if not isinstance(value, list):
            raise GatewayError("INVALID_FILTER", f"filter on '{column}': in takes an array")
        if is_json:
            choices = list(value)
            return lambda row: any(_json_equal(row.get(column), c) for c in choices)
        allowed = [convert(v) for v in value if v is not None]

        def in_(row: Mapping[str, Any]) -> bool:
            v = row_value(row)
            return v is not None and v is not _MISSING and any(_json_equal(v, a) for a in allowed)

        return in_

    if op in ("contains", "containedBy", "overlaps"):
        if is_array:
            if not isinstance(value, list):
                raise _invalid_value(column, f"{op} takes an array")
            wanted = [convert(v) for v in value]

            # hashed: linear in the row's array and the filter's (every converted element
            # type is hashable, and equal values hash equal: 1 and 1.0, Decimal("1.0"))
            wanted_set = _as_set(wanted)

            def array_op(row: Mapping[str, Any]) -> bool:
                have = row_value(row)
                if not isinstance(have, list):
                    return False
                if op == "contains":
                    have_set = _as_set(have)
                    return all(w in have_set for w in wanted)
                if op == "containedBy":
                    return all(h in wanted_set for h in have)
                return any(h in wanted_set for h in have if h is not None)

            return array_op
        if is_json and op != "overlaps":
            if op == "contains":
                return lambda row: (
                    row.get(column) is not None and jsonb_contains(row.get(column), value)
                )
            return lambda row: (
                row.get(column) is not None and jsonb_contains(value, row.get(column))
            )
        raise _invalid_value(column, f"{op} needs an array or jsonb column")

    # eq neq gt gte lt lte
    if is_json and op in ("gt", "gte", "lt", "lte"):
        # jsonb's own total order (objects > arrays > booleans > numbers > strings, ...)
        # is not reproduced here: refused rather than answered differently from /query
        raise GatewayError(
            "INVALID_FILTER",
            f"filter on '{column}': {op} on a jsonb column is not supported in realtime",
        )
    if is_array:
        if not isinstance(value, list):
            raise _invalid_value(column, "compare an array column with an array")
        target: Any = [convert(v) for v in value]
    elif is_json:
        target = value
    else:
        target = convert(value)

    def compare(row: Mapping[str, Any]) -> bool:
        v = row.get(column) if is_json else row_value(row)
        if v is None or v is _MISSING:
            return False
        try:
            if op == "eq":
                return _json_equal(v, target)
            if op == "neq":
                return not _json_equal(v, target)
            if is_array:
                # PostgreSQL orders arrays element by element, a NULL element after
                # every value, then by length
                v, compared = _array_key(v), _array_key(target)
            else:
                compared = target
            if op == "gt":
                return bool(v > compared)
            if op == "gte":
                return bool(v >= compared)
            if op == "lt":
                return bool(v < compared)
            return bool(v <= compared)
        except TypeError:
            return False

    return compare


def compile_filters(
    filters: Iterable[FilterLike], column_types: Mapping[str, str] | None = None
) -> tuple[Predicate, tuple[str, ...]]:
    """A predicate on a row image (AND of all filters) and the columns they use.

    ``column_types`` maps column names to registry types (``text``, ``bigint[]``, ...) so
    values compare as their type (timestamps as instants, numerics as decimals); a column
    without a type compares as JSON.
    """
    types = column_types or {}
    compiled: list[tuple[str, Predicate]] = []
    for f in filters:
        compiled.append((f.column, _compile_one(f, types.get(f.column))))
    columns = tuple(dict.fromkeys(c for c, _ in compiled))
    if not compiled:
        return (lambda row: True), ()

    def predicate(row: Mapping[str, Any]) -> bool:
        return all(p(row) for _, p in compiled)

    # A delete carries only the primary key: filters on other columns can't be checked
    # there, so deletes are matched on the filters whose columns they carry.
    def partial(row: Mapping[str, Any]) -> bool:
        return all(p(row) for c, p in compiled if c in row)

    predicate.partial = partial  # type: ignore[attr-defined]
    return predicate, columns


def classify_change(
    predicate: Predicate, filter_columns: tuple[str, ...], owner: str | None, change: Change
) -> Change | None:
    """What a subscriber with this filter receives for a change: the change itself, its
    ``leave`` form (an update moved the row out of the filter), or nothing.

    One function for the subscription on the loop and the filter worker process, so a
    verdict does not depend on where it is computed."""
    if change.op == "truncate":
        return change  # every row is gone, whatever the filter (and whoever owned it)
    if owner is not None and change.owner != owner:
        return None  # owner tables: only this subscriber's rows
    if not filter_columns:
        return change  # no filter: the row is not even parsed
    row = change.row
    if row is None:
        partial = getattr(predicate, "partial", None)
        return change if partial is None or partial(change.pk) else None
    if predicate(row):
        return change
    old = change.old_row()
    if old is not None and predicate(old):
        return change.as_leave()
    return None
