"""The compiler's building blocks: the statement builder, and where each value comes from.

``Builder`` carries one compile — the table, the principal, the row owner — and renders
references, filters and bound values as ``sqltext`` pieces. Every parameter it binds is a
``Param`` with a *source*: a function from (query, session user) to the value, converted
and checked, so the plan (``plans.py``) can take the same value from the next request of
the shape without compiling again. The sources here are the only places a plan reads a
request: filters' values, inserted rows, ``set`` entries, limit, offset, ``maxRows`` and
the session's user. Pure: no I/O, no database driver.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from gateway.errors import GatewayError
from gateway.metadata.catalog import ColumnInfo, Principal, TableInfo
from gateway.query import permissions as perm
from gateway.query import sqltext as sql
from gateway.query.contract import Filter, Query
from gateway.query.plans import Source
from gateway.query.values import BadValue, ColumnType, column_type, converter

_OPERATORS: dict[str, str] = {
    "eq": "=",
    "neq": "<>",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "like": "LIKE",
    "ilike": "ILIKE",
    "contains": "@>",
    "containedBy": "<@",
    "overlaps": "&&",
}


class Param:
    """One bound parameter while a plan is compiled: its value for this request, and its
    source for the next ones (None: the same value for every request of the shape)."""

    __slots__ = ("source", "value")

    def __init__(self, value: Any, source: Source | None) -> None:
        self.value = value
        self.source = source


def query_limit(query: Query, user_id: str | None) -> int:
    return query.limit


def query_offset(query: Query, user_id: str | None) -> int:
    return query.offset


def query_max_rows(query: Query, user_id: str | None) -> int | None:
    return query.max_rows


def session_user_uuid(query: Query, user_id: str | None) -> uuid.UUID:
    assert user_id is not None
    return uuid.UUID(user_id)


class Builder:
    """One compile in progress: the statement's pieces are rendered here, and every
    parameter and value check is recorded with its source, in the order it ran, so the
    plan can repeat exactly those per request."""

    def __init__(
        self,
        query: Query,
        table: TableInfo,
        principal: Principal,
        schema_name: str,
        owner: str | None,
        max_response_bytes: int,
        in_batch: bool,
    ) -> None:
        self.query = query
        self.max_response_bytes = max_response_bytes
        self.in_batch = in_batch
        self.table = table
        self.principal = principal
        # the parameters in text order (a list the mutation swaps while it collects parts)
        self.params: list[Param] = []
        # the parameters and checks with a per-request source, in the order they ran
        self.steps: list[tuple[Param | None, Source]] = []
        self.target = sql.Identifier(schema_name, table.name)
        # the session user this statement is held to (owner tables, public keys), else None
        self.owner = owner

    def ctype(self, column: ColumnInfo) -> ColumnType:
        ctype = column_type(column)
        if ctype is None:
            raise GatewayError(
                "INVALID_COLUMN",
                f"column '{column.name}' has a type the gateway cannot take values for",
                details={"column": column.name, "type": column.data_type},
            )
        return ctype

    def bind(self, source: Source) -> Param:
        """A parameter taken from the request by ``source``: now, and in every later
        request of the shape (in the same order relative to the other steps)."""
        param = Param(source(self.query, self.principal.user_id), source)
        self.steps.append((param, source))
        return param

    def check(self, source: Source) -> None:
        """A check on the request's values (raising its refusal), run per request."""
        source(self.query, self.principal.user_id)
        self.steps.append((None, source))

    def const(self, value: Any) -> Param:
        return Param(value, None)

    def value(
        self, column: ColumnInfo, raw: Source, field: str, *, as_array: bool | None = None
    ) -> sql.Composed:
        """``%s::<type>`` with the value ``raw`` takes from the request converted and
        bound; ``as_array`` forces ``<base>[]``."""
        ctype = self.ctype(column)
        array = ctype.is_array if as_array is None else as_array
        name = column.name
        to_python = converter(ctype, as_array=array)

        def converted(query: Query, user_id: str | None) -> Any:
            try:
                return to_python(raw(query, user_id))
            except BadValue as exc:
                raise GatewayError(
                    "INVALID_VALUE",
                    f"{field}: invalid value for column '{name}': {exc}",
                    details={"field": field, "column": name},
                ) from None

        self.params.append(self.bind(converted))
        cast = ctype.element_array_cast if array else ctype.cast
        return sql.SQL("%s::{}").format(cast)

    def col(self, column: ColumnInfo, alias: str = "x") -> sql.Composable:
        return sql.Identifier(alias, column.name)

    def where(self, filters: Sequence[Filter], field: str) -> sql.Composable:
        parts = [self.filter(f, i, f"{field}[{i}]") for i, f in enumerate(filters)]
        if self.owner is not None:
            # the owner condition, last so its parameter follows the filters' (the row
            # policies enforce the same rule again in PostgreSQL: docs/auth.md)
            assert self.table.owner_column is not None
            self.params.append(self.bind(session_user_uuid))
            parts.append(
                sql.SQL("{} = %s::uuid").format(sql.Identifier("x", self.table.owner_column))
            )
        if not parts:
            return sql.SQL("")
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts)

    def filter(self, f: Filter, index: int, field: str) -> sql.Composable:
        column = perm.require_readable(self.table, f.column, self.principal, f"{field}.column")
        ref = self.col(column)
        vfield = f"{field}.value"

        def raw(query: Query, user_id: str | None) -> Any:
            return query.filters[index].value

        if f.op == "is":
            word = {None: "NULL", True: "TRUE", False: "FALSE"}[f.value]
            if f.value is not None and column_type(column) != ColumnType("boolean", False):
                raise self._bad_filter(field, f"'is {word.lower()}' needs a boolean column")
            return sql.SQL("{} IS " + word).format(ref)
        ctype = self.ctype(column)
        if f.op == "in":
            if ctype.is_array or ctype.base == "jsonb":
                raise self._bad_filter(field, "'in' needs a scalar column")
            return sql.SQL("{} = ANY({})").format(
                ref, self.value(column, raw, vfield, as_array=True)
            )
        if f.op in ("like", "ilike"):
            if ctype.base != "text" or ctype.is_array:
                raise self._bad_filter(field, f"'{f.op}' needs a text column")
        elif f.op in ("contains", "containedBy", "overlaps") and not (
            ctype.is_array or (ctype.base == "jsonb" and f.op != "overlaps")
        ):
            allowed = "an array column" if f.op == "overlaps" else "an array or jsonb column"
            raise self._bad_filter(field, f"'{f.op}' needs {allowed}")
        op = sql.SQL(_OPERATORS[f.op])
        return sql.SQL("{} {} {}").format(ref, op, self.value(column, raw, vfield))

    @staticmethod
    def _bad_filter(field: str, message: str) -> GatewayError:
        return GatewayError(
            "INVALID_FILTER", f"{field}: {message}", details={"field": f"{field}.op"}
        )

    def sort_keys(self, query: Query) -> list[tuple[sql.Composable, sql.SQL]]:
        """Each sort as (column reference, "ASC NULLS LAST"-style direction)."""
        keys = []
        for i, s in enumerate(query.sorts):
            column = perm.require_readable(
                self.table, s.column, self.principal, f"{query.field}.sorts[{i}].column"
            )
            direction = ("DESC" if s.descending else "ASC") + (
                " NULLS FIRST" if s.nulls_first else " NULLS LAST"
            )
            keys.append((self.col(column), sql.SQL(direction)))
        return keys

    def returning(self, query: Query) -> tuple[ColumnInfo, ...]:
        return perm.returning_columns(
            self.table,
            query.returning,
            self.principal,
            f"{query.field}.returning",
            explicit=query.returning is not None,
        )


def row_value(index: int, name: str) -> Source:
    def raw(query: Query, user_id: str | None) -> Any:
        assert query.data is not None
        return query.data[index][name]

    return raw


def session_user_text(query: Query, user_id: str | None) -> str | None:
    return user_id


def row_owner_value(index: int, owner_column: str) -> Source:
    def raw(query: Query, user_id: str | None) -> Any:
        assert query.data is not None
        return query.data[index].get(owner_column)

    return raw


def owner_check(table: TableInfo, raw: Source, field: str) -> Source:
    """A value that names the row's user must name the session's (null: filled in)."""

    def check(query: Query, user_id: str | None) -> None:
        value = raw(query, user_id)
        if value is not None and not same_user(value, user_id or ""):
            raise perm.owner_mismatch(table, field)

    return check


def same_user(value: Any, user_id: str) -> bool:
    try:
        return isinstance(value, str) and uuid.UUID(value) == uuid.UUID(user_id)
    except ValueError:
        return False


def set_value(index: int) -> Source:
    def raw(query: Query, user_id: str | None) -> Any:
        assert query.set is not None
        return query.set[index][1]

    return raw
