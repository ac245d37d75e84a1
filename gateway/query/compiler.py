"""Typed query + catalog + key → one SQL statement, with no I/O.

Safety by construction:

* identifiers come only from the catalog (``ProjectCatalog.schema_name``, ``TableInfo``,
  ``ColumnInfo``) and reach SQL only through ``sqltext.Identifier`` (quoted, never spliced);
* values reach SQL only as parameters, each cast to its column's type with a cast taken
  from a fixed allowlist (``values.py``; never the catalog's string spliced as SQL), and
  each converted in Python first, so a wrong value is a 400 ``INVALID_VALUE`` naming the
  column rather than a PostgreSQL error.

Every statement answers exactly ONE row ``(data text, count bigint, matched bigint)``:
``data`` is the JSON array text of the rows (columns in the requested order) or NULL when
the statement returns no rows by design; ``count`` is rows returned/affected; ``matched``
is the number of rows a bounded UPDATE/DELETE matched. The executor therefore never
converts row values in Python: it splices ``data`` into the response as is.

A bounded mutation (``maxRows``) locks the matching rows, counts them, and changes them
only if the count fits, in one statement. When it does not fit, the statement raises a
cast error whose input carries ``ROW_LIMIT_MARKER`` and the count, which aborts the whole
transaction (so a batch stays all-or-nothing even though the executor only reads results
after COMMIT was sent); the executor turns that into 400 ``ROW_LIMIT_EXCEEDED``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError
from gateway.metadata.catalog import ColumnInfo, Principal, ProjectCatalog, TableInfo
from gateway.query import permissions as perm
from gateway.query import sqltext as sql
from gateway.query.contract import Filter, Query
from gateway.query.values import BadValue, ColumnType, column_type, convert

PUBLIC_DEFAULT_MAX_ROWS = 50
ROW_LIMIT_MARKER = "gateway_row_limit_exceeded:"
RESPONSE_LIMIT_MARKER = "gateway_response_too_large:"
# what the transaction's earlier statements answered (the executor starts it at 0); a
# statement run outside the executor counts from 0
_ANSWER_BYTES_SO_FAR = sql.SQL(
    "coalesce(nullif(current_setting('gateway.answer_bytes', true), ''), '0')::bigint"
)
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024

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


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    sql: sql.Composed
    params: list[Any]
    operation: str
    table: str
    max_rows: int | None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


# --- building blocks ------------------------------------------------------------------


class _Builder:
    def __init__(
        self,
        catalog: ProjectCatalog,
        table: TableInfo,
        principal: Principal,
        owner: str | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        in_batch: bool = False,
    ) -> None:
        self.catalog = catalog
        self.max_response_bytes = max_response_bytes
        self.in_batch = in_batch
        self.table = table
        self.principal = principal
        self.params: list[Any] = []
        self.target = sql.Identifier(catalog.schema_name, table.name)
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

    def value(
        self, column: ColumnInfo, value: Any, field: str, *, as_array: bool | None = None
    ) -> sql.Composed:
        """``%s::<type>`` with the converted value bound; ``as_array`` forces ``<base>[]``."""
        ctype = self.ctype(column)
        array = ctype.is_array if as_array is None else as_array
        try:
            converted = convert(ctype, value, as_array=array)
        except BadValue as exc:
            raise GatewayError(
                "INVALID_VALUE",
                f"{field}: invalid value for column '{column.name}': {exc}",
                details={"field": field, "column": column.name},
            ) from None
        self.params.append(converted)
        cast = ctype.element_array_cast if array else ctype.cast
        return sql.SQL("%s::{}").format(cast)

    def col(self, column: ColumnInfo, alias: str = "x") -> sql.Composable:
        return sql.Identifier(alias, column.name)

    def where(self, filters: Sequence[Filter], field: str) -> sql.Composable:
        parts = [self.filter(f, f"{field}[{i}]") for i, f in enumerate(filters)]
        if self.owner is not None:
            # the owner condition, last so its parameter follows the filters' (the row
            # policies enforce the same rule again in PostgreSQL: docs/auth.md)
            assert self.table.owner_column is not None
            self.params.append(uuid.UUID(self.owner))
            parts.append(
                sql.SQL("{} = %s::uuid").format(sql.Identifier("x", self.table.owner_column))
            )
        if not parts:
            return sql.SQL("")
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts)

    def filter(self, f: Filter, field: str) -> sql.Composable:
        column = perm.require_readable(self.table, f.column, self.principal, f"{field}.column")
        ref = self.col(column)
        vfield = f"{field}.value"
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
                ref, self.value(column, f.value, vfield, as_array=True)
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
        return sql.SQL("{} {} {}").format(ref, op, self.value(column, f.value, vfield))

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


def _column_list(cols: Sequence[ColumnInfo], alias: str = "x") -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, c.name) for c in cols)


def _returning_clause(cols: Sequence[ColumnInfo]) -> sql.Composable:
    if not cols:
        return sql.SQL(" RETURNING 1 AS gateway_one")
    return sql.SQL(" RETURNING ") + _column_list(cols)


def _data_expr(
    b: _Builder, cols: Sequence[ColumnInfo], alias: str, params: list[Any]
) -> sql.Composable:
    """A mutation's RETURNING rows as JSON text, bounded like a select's answer; the
    bound's parameter is appended to ``params`` (the caller places it in text order)."""
    if not cols:
        return sql.SQL("NULL::text")
    # alias.* (not a bare alias): a bare name would mean a column if one had that name.
    data = sql.SQL("coalesce(json_agg({}.*), '[]')::text").format(sql.Identifier(alias))
    params.append(b.max_response_bytes)
    return _bounded(b, data)


def _bounded(b: _Builder, data: sql.Composable) -> sql.Composable:
    """``data`` (an aggregate's JSON text), or an error past the answer bound (one ``%s``).

    The answer is bounded in the statement (docs/query-api.md "Bounded answers"): the
    bytes of the rows' JSON, in a batch added to what the transaction's earlier statements
    answered (the transaction-local gateway.answer_bytes), are checked before the answer
    leaves PostgreSQL; past the limit the statement aborts the transaction with
    RESPONSE_LIMIT_MARKER, so the oversized rows are never sent. Identical aggregate calls
    are one aggregate: PostgreSQL computes it once.
    """
    if b.in_batch:
        check: sql.Composable = sql.SQL(
            "set_config('gateway.answer_bytes', ({so_far} + octet_length({data}))::text,"
            " true)::bigint"
        ).format(so_far=_ANSWER_BYTES_SO_FAR, data=data)
        reported: sql.Composable = sql.SQL("current_setting('gateway.answer_bytes')")
    else:
        # one statement: no running total (measured: the setting costs ~20 us)
        check = sql.SQL("octet_length({data})::bigint").format(data=data)
        reported = sql.SQL("({})::text").format(check)
    return sql.SQL(
        "CASE WHEN {check} > %s::bigint THEN ({marker} || {reported})::bigint::text ELSE {data} END"
    ).format(check=check, reported=reported, data=data, marker=sql.Literal(RESPONSE_LIMIT_MARKER))


# --- the four operations --------------------------------------------------------------


def _compile_select(b: _Builder, query: Query) -> sql.Composable:
    cols = perm.select_columns(b.table, query.columns, b.principal, f"{query.field}.columns")
    # the answer-size bound comes first in the text, then WHERE, LIMIT and OFFSET
    b.params.append(b.max_response_bytes)
    where = b.where(query.filters, f"{query.field}.filters")
    keys = b.sort_keys(query)
    b.params.extend([query.limit, query.offset])
    # The inner query filters, sorts and limits (a top-N sort) and passes the values on
    # under generated names (c0.., and the sort keys as k0..), so no user column name can
    # collide with them; the JSON is built only for the rows that survive the LIMIT, and
    # json_agg orders by the sort keys explicitly rather than trusting a sorted subquery
    # to be aggregated in order.
    named = [(b.col(c), f"c{i}") for i, c in enumerate(cols)]
    named += [(ref, f"k{i}") for i, (ref, _) in enumerate(keys)]
    inner_cols = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(ref, sql.Identifier(name)) for ref, name in named
    )
    row_cols = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(sql.Identifier("r", f"c{i}"), sql.Identifier(c.name))
        for i, c in enumerate(cols)
    )
    inner_order = sql.SQL(", ").join(sql.SQL("{} {}").format(ref, d) for ref, d in keys)
    agg_order = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier("r", f"k{i}"), d) for i, (_, d) in enumerate(keys)
    )
    data = sql.SQL("coalesce(json_agg(to_json(v.*){agg_order}), '[]')::text").format(
        agg_order=sql.SQL(" ORDER BY ") + agg_order if keys else sql.SQL("")
    )
    return sql.SQL(
        "SELECT {data} AS data, count(*)::bigint AS count, NULL::bigint AS matched"
        " FROM (SELECT {inner_cols} FROM {target} AS x{where}{order}"
        " LIMIT %s::bigint OFFSET %s::bigint) AS r"
        " CROSS JOIN LATERAL (SELECT {row_cols}) AS v"
    ).format(
        data=_bounded(b, data),
        inner_cols=inner_cols,
        target=b.target,
        where=where,
        order=sql.SQL(" ORDER BY ") + inner_order if keys else sql.SQL(""),
        row_cols=row_cols,
    )


def _compile_insert(b: _Builder, query: Query) -> sql.Composable:
    assert query.data is not None
    field = f"{query.field}.data"
    single = len(query.data) == 1
    data = query.data
    names = query.data_columns
    if b.owner is not None:
        data, names = _owned_rows(b, query, field)
    columns = [_insert_column(b, name, f"{field}.{name}") for name in names]
    ret = b.returning(query)
    if not columns:
        body = sql.SQL("DEFAULT VALUES")
    else:
        rows = []
        for i, row in enumerate(data):
            rfield = field if single else f"{field}[{i}]"
            rows.append(
                sql.SQL("({})").format(
                    sql.SQL(", ").join(
                        b.value(c, row[c.name], f"{rfield}.{c.name}") for c in columns
                    )
                )
            )
        body = sql.SQL("({}) VALUES {}").format(
            sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
            sql.SQL(", ").join(rows),
        )
    return sql.SQL(
        "WITH w AS (INSERT INTO {target} AS x {body}{returning})"
        " SELECT {data} AS data, count(*)::bigint AS count, NULL::bigint AS matched FROM w"
    ).format(
        target=b.target,
        body=body,
        returning=_returning_clause(ret),
        data=_data_expr(b, ret, "w", b.params),
    )


def _insert_column(b: _Builder, name: str, field: str) -> ColumnInfo:
    """A column an insert writes. The owner column of an owner table is filled by the
    gateway with the session's user, so its client-write flag doesn't apply."""
    if b.owner is not None and name == b.table.owner_column:
        column = b.table.column(name)
        if column is not None:
            return column
    return perm.require_writable(b.table, name, b.principal, field)


def _owned_rows(
    b: _Builder, query: Query, field: str
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """An insert by a session on an owner table: every row's owner column is the session's
    user — filled when absent or null, 403 ``ROW_OWNER_MISMATCH`` when it names another."""
    assert query.data is not None and b.owner is not None
    owner_column = b.table.owner_column
    assert owner_column is not None
    single = len(query.data) == 1
    rows: list[dict[str, Any]] = []
    for i, row in enumerate(query.data):
        value = row.get(owner_column)
        if value is not None and not _same_user(value, b.owner):
            rfield = field if single else f"{field}[{i}]"
            raise perm.owner_mismatch(b.table, f"{rfield}.{owner_column}")
        rows.append({**row, owner_column: b.owner})
    names = query.data_columns
    if owner_column not in names:
        names = (*names, owner_column)
    return rows, names


def _same_user(value: Any, user_id: str) -> bool:
    try:
        return isinstance(value, str) and uuid.UUID(value) == uuid.UUID(user_id)
    except ValueError:
        return False


def _effective_max_rows(query: Query, principal: Principal) -> int | None:
    if query.max_rows is not None:
        return query.max_rows
    return PUBLIC_DEFAULT_MAX_ROWS if principal.is_public else None


def _compile_mutation(b: _Builder, query: Query, max_rows: int | None) -> sql.Composable:
    if not query.filters:
        raise GatewayError(
            "FILTERLESS_MUTATION",
            f"{query.field}: {query.operation} needs at least one filter",
            details={"field": f"{query.field}.filters"},
            hint="add a filter that selects the rows to change",
        )
    # Placeholders must be bound in textual order, and the bounded form puts WHERE (in
    # the CTE) before SET, so each part collects its parameters separately.
    outer = b.params
    b.params = where_params = []
    where = b.where(query.filters, f"{query.field}.filters")
    b.params = set_params = []
    set_clause: sql.Composable = sql.SQL("")
    if query.operation == "update":
        assert query.set is not None
        sets = []
        for name, val in query.set:
            f = f"{query.field}.set.{name}"
            owner_set = b.owner is not None and name == b.table.owner_column
            if owner_set and not _same_user(val, b.owner or ""):
                # a public key can't hand its rows to another user
                raise perm.owner_mismatch(b.table, f)
            # setting it to the session's own user is a no-op (a client may send a whole
            # row back), whatever the column's client-write flag says
            column = b.table.column(name) if owner_set else None
            if column is None:
                column = perm.require_writable(b.table, name, b.principal, f)
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(name), b.value(column, val, f)))
        set_clause = sql.SQL(", ").join(sets)
    b.params = outer
    ret = b.returning(query)

    def change(condition: sql.Composable) -> sql.Composable:
        if query.operation == "update":
            head = sql.SQL("UPDATE {} AS x SET {}").format(b.target, set_clause)
        else:
            head = sql.SQL("DELETE FROM {} AS x").format(b.target)
        return sql.SQL("{}{}{}").format(head, condition, _returning_clause(ret))

    if max_rows is None:
        b.params.extend(set_params + where_params)
        return sql.SQL(
            "WITH u AS ({change}) SELECT {data} AS data, count(*)::bigint AS count,"
            " count(*)::bigint AS matched FROM u"
        ).format(change=change(where), data=_data_expr(b, ret, "u", b.params))

    # Bounded: lock what matches, count it, change it only if the count fits. The key is
    # the primary key when there is one (robust to concurrent updates), else ctid.
    pk = [c for c in b.table.columns if c.is_primary_key]
    key_cols = sql.SQL(", ").join(sql.Identifier("x", c.name) for c in pk) if pk else None
    if key_cols is not None:
        key_sel = sql.SQL(", ").join(sql.Identifier(c.name) for c in pk)
        match = sql.SQL("({}) IN (SELECT {} FROM m)").format(key_cols, key_sel)
        m_cols = key_cols
    else:
        match = sql.SQL("x.ctid IN (SELECT ctid FROM m)")
        m_cols = sql.SQL("x.ctid")
    condition = sql.SQL(" WHERE {} AND (SELECT n FROM c) <= %s::bigint").format(match)
    # m's WHERE, then u's SET and its guard, then the guard that aborts the transaction.
    data_params: list[Any] = []
    data = _data_expr(b, ret, "u", data_params)
    b.params.extend([*where_params, *set_params, max_rows, *data_params, max_rows])
    return sql.SQL(
        "WITH m AS (SELECT {m_cols} FROM {target} AS x{where} FOR UPDATE OF x),"
        " c AS (SELECT count(*)::bigint AS n FROM m),"
        " u AS ({change})"
        " SELECT {data} AS data, count(*)::bigint AS count,"
        " (SELECT CASE WHEN c.n > %s::bigint"
        " THEN ({marker} || c.n::text)::bigint ELSE c.n END FROM c) AS matched"
        " FROM u"
    ).format(
        m_cols=m_cols,
        target=b.target,
        where=where,
        change=change(condition),
        data=data,
        marker=sql.Literal(ROW_LIMIT_MARKER),
    )


def compile_query(
    query: Query,
    catalog: ProjectCatalog,
    principal: Principal,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    *,
    in_batch: bool = False,
) -> CompiledStatement:
    """The one statement for ``query``; every refusal is a ``GatewayError``.

    A select's answer may hold at most ``max_response_bytes`` of row JSON
    (``GATEWAY_MAX_RESPONSE_BYTES``); ``in_batch``: together with the answers of the
    transaction's earlier statements."""
    write = query.operation != "select"
    table = perm.resolve_table(catalog, query.table, principal, write=write)
    owner = perm.row_owner(table, principal, write=write)
    b = _Builder(catalog, table, principal, owner, max_response_bytes, in_batch)
    max_rows: int | None = None
    if query.operation == "select":
        composed = _compile_select(b, query)
    elif query.operation == "insert":
        composed = _compile_insert(b, query)
    else:
        max_rows = _effective_max_rows(query, principal)
        composed = _compile_mutation(b, query, max_rows)
    assert isinstance(composed, sql.Composed)
    return CompiledStatement(
        composed, b.params, query.operation, table.name, max_rows, max_response_bytes
    )
