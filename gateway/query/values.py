"""Column types and values: which registered types the gateway takes values for, and how a
JSON value becomes the Python value psycopg binds for a column of that type.

The compiler (``compiler.py``) binds every value through ``converter``, so a wrong value is
a 400 ``INVALID_VALUE`` naming the column rather than a PostgreSQL error, and writes each
value's cast from the allowlist here (``ColumnType.cast``), never from the catalog's
string. Kept apart from statement assembly: these rules are per type and change on their
own (a new type is an entry here and a converter), while the statements change per
operation. Pure: no I/O, no database driver.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from gateway.metadata.catalog import ColumnInfo
from gateway.query import sqltext as sql

# The registry's allowlisted types → the cast we write. Aliases PostgreSQL itself prints
# are accepted so a registry filled from information_schema or format_type still works.
_BASE_TYPES: dict[str, str] = {
    "text": "text",
    "character varying": "text",
    "varchar": "text",
    "integer": "integer",
    "int": "integer",
    "int4": "integer",
    "bigint": "bigint",
    "int8": "bigint",
    "smallint": "smallint",
    "int2": "smallint",
    "boolean": "boolean",
    "bool": "boolean",
    "numeric": "numeric",
    "decimal": "numeric",
    "real": "real",
    "float4": "real",
    "double precision": "double precision",
    "float8": "double precision",
    "uuid": "uuid",
    "date": "date",
    "timestamptz": "timestamptz",
    "timestamp with time zone": "timestamptz",
    "jsonb": "jsonb",
}

_INT_RANGES: dict[str, tuple[int, int]] = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}
_INT_TEXT = re.compile(r"-?[0-9]{1,20}")
_NUMERIC_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,4})?")
_MAX_NUMERIC_CHARS = 1000


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column's registered type, resolved against the allowlist."""

    base: str  # canonical base type, e.g. "bigint"
    is_array: bool

    @property
    def cast(self) -> sql.SQL:
        return sql.SQL(self.base + ("[]" if self.is_array else ""))

    @property
    def element_array_cast(self) -> sql.SQL:
        return sql.SQL(self.base + "[]")


def column_type(column: ColumnInfo) -> ColumnType | None:
    raw = column.data_type.strip().lower()
    is_array = raw.endswith("[]")
    if is_array:
        raw = raw[:-2].strip()
    base = _BASE_TYPES.get(raw)
    return None if base is None else ColumnType(base, is_array)


# --- value conversion -----------------------------------------------------------------


class BadValue(Exception):
    """A value that does not fit its column; carries the reason only."""


def _to_int(base: str) -> Callable[[Any], Any]:
    lo, hi = _INT_RANGES[base]

    def convert(v: Any) -> int:
        if isinstance(v, bool):
            raise BadValue(f"expected an integer ({base})")
        # Numeric strings (JS clients send big ints that way) and 1e3-style integral floats.
        integral_float = isinstance(v, float) and v.is_integer()
        if integral_float or (isinstance(v, str) and _INT_TEXT.fullmatch(v)):
            v = int(v)
        if not isinstance(v, int):
            raise BadValue(f"expected an integer ({base})")
        if not lo <= v <= hi:
            raise BadValue(f"integer out of range for {base}")
        return v

    return convert


def _to_text(v: Any) -> str:
    if not isinstance(v, str):
        raise BadValue("expected a string")
    if "\x00" in v:
        raise BadValue("strings must not contain NUL characters")
    return v


def _to_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise BadValue("expected true or false")
    return v


def _to_numeric(v: Any) -> Decimal:
    if isinstance(v, bool):
        raise BadValue("expected a number")
    if isinstance(v, int):
        if abs(v) >= 10**_MAX_NUMERIC_CHARS:
            raise BadValue("number too large")
        return Decimal(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadValue("numbers must be finite")
        return Decimal(repr(v))
    if isinstance(v, str) and len(v) <= _MAX_NUMERIC_CHARS and _NUMERIC_TEXT.fullmatch(v):
        try:
            d = Decimal(v)
        except InvalidOperation as exc:  # pragma: no cover - the regex already vets it
            raise BadValue("expected a number") from exc
        # numeric's exponent range; beyond it PostgreSQL would reject the value anyway.
        if d != 0 and not -16383 <= d.adjusted() <= 131071:
            raise BadValue("number out of range for numeric")
        return d
    raise BadValue("expected a number or a numeric string")


def _to_float(base: str) -> Callable[[Any], Any]:
    limit = 3.4028234663852886e38 if base == "real" else math.inf

    def convert(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BadValue("expected a number")
        try:
            f = float(v)
        except OverflowError as exc:
            raise BadValue(f"number out of range for {base}") from exc
        if not math.isfinite(f) or abs(f) > limit:
            raise BadValue(f"number out of range for {base}")
        return f

    return convert


def _to_uuid(v: Any) -> uuid.UUID:
    if not isinstance(v, str) or len(v) > 64:
        raise BadValue("expected a UUID string")
    try:
        return uuid.UUID(v)
    except ValueError as exc:
        raise BadValue("expected a UUID string") from exc


def _to_date(v: Any) -> dt.date:
    if not isinstance(v, str) or len(v) > 32:
        raise BadValue("expected an ISO date string (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(v)
    except ValueError as exc:
        raise BadValue("expected an ISO date string (YYYY-MM-DD)") from exc


def _to_timestamptz(v: Any) -> dt.datetime:
    if not isinstance(v, str) or len(v) > 64:
        raise BadValue("expected an ISO 8601 timestamp string")
    try:
        ts = dt.datetime.fromisoformat(v)
    except ValueError as exc:
        raise BadValue("expected an ISO 8601 timestamp string") from exc
    # A timestamp without an offset is read as UTC, never as the server's time zone.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=dt.UTC)


def _to_jsonb(v: Any) -> str:
    # bound as text and cast by the statement (``%s::jsonb``): no driver type needed here
    try:
        return orjson.dumps(v).decode()
    except TypeError as exc:  # an integer past 64 bits (only from Python callers: orjson
        # reads such a JSON number as a float)
        raise BadValue("not representable as JSON") from exc


def _scalar_converter(base: str) -> Callable[[Any], Any]:
    if base in _INT_RANGES:
        return _to_int(base)
    if base in ("real", "double precision"):
        return _to_float(base)
    return {
        "text": _to_text,
        "boolean": _to_bool,
        "numeric": _to_numeric,
        "uuid": _to_uuid,
        "date": _to_date,
        "timestamptz": _to_timestamptz,
        "jsonb": _to_jsonb,
    }[base]


# one converter per base type, built once (a compiled plan converts on every request)
_SCALAR: dict[str, Callable[[Any], Any]] = {
    base: _scalar_converter(base) for base in set(_BASE_TYPES.values())
}


def converter(ctype: ColumnType, *, as_array: bool) -> Callable[[Any], Any]:
    """One column type's conversion, resolved once: a JSON value → the Python value
    psycopg binds (``None`` stays SQL NULL); a wrong value raises ``BadValue``."""
    scalar = _SCALAR[ctype.base]
    if not as_array:

        def one(value: Any) -> Any:
            return None if value is None else scalar(value)

        return one

    def many(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list):
            raise BadValue(f"expected an array of {ctype.base}")
        out = []
        for item in value:
            if isinstance(item, list):
                raise BadValue("nested arrays are not supported")
            out.append(None if item is None else scalar(item))
        return out

    return many
