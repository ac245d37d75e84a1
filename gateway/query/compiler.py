"""Typed query + catalog + key → one SQL statement, with no I/O.

Safety by construction:

* identifiers come only from the catalog (``ProjectCatalog.schema_name``, ``TableInfo``,
  ``ColumnInfo``) and reach SQL only through ``sqltext.Identifier`` (quoted, never spliced);
* values reach SQL only as parameters, each cast to its column's type with a cast taken
  from a fixed allowlist (``values.py``; never the catalog's string spliced as SQL), and
  each converted in Python first, so a wrong value is a 400 ``INVALID_VALUE`` naming the
  column rather than a PostgreSQL error.

Compiled once per query shape: ``compile_query`` keeps the statement's text and where
each parameter comes from as a plan on the catalog (``plans.py``); a later request of
the same shape binds its own values into it and runs the value checks again, nothing
else (docs/query-api.md "How a query becomes SQL").

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError
from gateway.metadata.catalog import ColumnInfo, Principal, ProjectCatalog
from gateway.query import permissions as perm
from gateway.query import sqltext as sql
from gateway.query.builder import (
    Builder,
    Param,
    owner_check,
    query_limit,
    query_max_rows,
    query_offset,
    row_owner_value,
    row_value,
    session_user_text,
    set_value,
)
from gateway.query.contract import Query
from gateway.query.plans import Plan, shape_key

PUBLIC_DEFAULT_MAX_ROWS = 50
ROW_LIMIT_MARKER = "gateway_row_limit_exceeded:"
RESPONSE_LIMIT_MARKER = "gateway_response_too_large:"
# what the transaction's earlier statements answered (the executor starts it at 0); a
# statement run outside the executor counts from 0
_ANSWER_BYTES_SO_FAR = sql.SQL(
    "coalesce(nullif(current_setting('gateway.answer_bytes', true), ''), '0')::bigint"
)
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    """One statement to run: ``text`` is the same string object for every request of a
    query shape (the plan's), ``params`` this request's values in ``%s`` order."""

    text: str
    params: list[Any]
    operation: str
    table: str
    max_rows: int | None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


def _column_list(cols: Sequence[ColumnInfo], alias: str = "x") -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, c.name) for c in cols)


def _returning_clause(cols: Sequence[ColumnInfo]) -> sql.Composable:
    if not cols:
        return sql.SQL(" RETURNING 1 AS gateway_one")
    return sql.SQL(" RETURNING ") + _column_list(cols)


def _data_expr(
    b: Builder, cols: Sequence[ColumnInfo], alias: str, params: list[Param]
) -> sql.Composable:
    """A mutation's RETURNING rows as JSON text, bounded like a select's answer; the
    bound's parameter is appended to ``params`` (the caller places it in text order)."""
    if not cols:
        return sql.SQL("NULL::text")
    # alias.* (not a bare alias): a bare name would mean a column if one had that name.
    data = sql.SQL("coalesce(json_agg({}.*), '[]')::text").format(sql.Identifier(alias))
    params.append(b.const(b.max_response_bytes))
    return _bounded(b, data)


def _bounded(b: Builder, data: sql.Composable) -> sql.Composable:
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


def _compile_select(b: Builder, query: Query) -> sql.Composable:
    cols = perm.select_columns(b.table, query.columns, b.principal, f"{query.field}.columns")
    # the answer-size bound comes first in the text, then WHERE, LIMIT and OFFSET
    b.params.append(b.const(b.max_response_bytes))
    where = b.where(query.filters, f"{query.field}.filters")
    keys = b.sort_keys(query)
    b.params.extend([b.bind(query_limit), b.bind(query_offset)])
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


def _compile_insert(b: Builder, query: Query) -> sql.Composable:
    assert query.data is not None
    field = f"{query.field}.data"
    single = len(query.data) == 1
    names = query.data_columns
    if b.owner is not None:
        names = _owned_rows(b, query, field)
    columns = [_insert_column(b, name, f"{field}.{name}") for name in names]
    ret = b.returning(query)
    if not columns:
        body = sql.SQL("DEFAULT VALUES")
    else:
        owner_column = b.table.owner_column if b.owner is not None else None
        rows = []
        for i in range(len(query.data)):
            rfield = field if single else f"{field}[{i}]"
            rows.append(
                sql.SQL("({})").format(
                    sql.SQL(", ").join(
                        b.value(
                            c,
                            session_user_text if c.name == owner_column else row_value(i, c.name),
                            f"{rfield}.{c.name}",
                        )
                        for c in columns
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


def _insert_column(b: Builder, name: str, field: str) -> ColumnInfo:
    """A column an insert writes. The owner column of an owner table is filled by the
    gateway with the session's user, so its client-write flag doesn't apply."""
    if b.owner is not None and name == b.table.owner_column:
        column = b.table.column(name)
        if column is not None:
            return column
    return perm.require_writable(b.table, name, b.principal, field)


def _owned_rows(b: Builder, query: Query, field: str) -> tuple[str, ...]:
    """An insert by a session on an owner table: every row's owner column is the session's
    user — filled when absent or null, 403 ``ROW_OWNER_MISMATCH`` when it names another
    (checked per request, every row before any value). The columns written."""
    assert query.data is not None and b.owner is not None
    owner_column = b.table.owner_column
    assert owner_column is not None
    single = len(query.data) == 1
    for i in range(len(query.data)):
        rfield = field if single else f"{field}[{i}]"
        b.check(owner_check(b.table, row_owner_value(i, owner_column), f"{rfield}.{owner_column}"))
    names = query.data_columns
    if owner_column not in names:
        names = (*names, owner_column)
    return names


def _effective_max_rows(query: Query, principal: Principal) -> int | None:
    if query.max_rows is not None:
        return query.max_rows
    return PUBLIC_DEFAULT_MAX_ROWS if principal.is_public else None


def _compile_mutation(b: Builder, query: Query, max_rows: int | None) -> sql.Composable:
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
        for i, (name, _) in enumerate(query.set):
            f = f"{query.field}.set.{name}"
            raw = set_value(i)
            owner_set = b.owner is not None and name == b.table.owner_column
            if owner_set:
                # a public key can't hand its rows to another user
                b.check(owner_check(b.table, raw, f))
            # setting it to the session's own user is a no-op (a client may send a whole
            # row back), whatever the column's client-write flag says
            column = b.table.column(name) if owner_set else None
            if column is None:
                column = perm.require_writable(b.table, name, b.principal, f)
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(name), b.value(column, raw, f)))
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
    data_params: list[Param] = []
    data = _data_expr(b, ret, "u", data_params)
    bound = b.bind(query_max_rows) if query.max_rows is not None else b.const(max_rows)
    b.params.extend([*where_params, *set_params, bound, *data_params, bound])
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
    transaction's earlier statements. Compiled once per query shape and catalog
    (``query/plans.py``); later requests of the shape only bind their values."""
    key = shape_key(query, principal, max_response_bytes, in_batch)
    plan: Plan | None = catalog.plans.get(key)
    if plan is None:
        plan, params = _compile_plan(query, catalog, principal, max_response_bytes, in_batch)
        catalog.plans.put(key, plan, plan.weight)
    else:
        params = plan.params(query, principal.user_id)
    max_rows = _effective_max_rows(query, principal) if plan.mutation else None
    return CompiledStatement(
        plan.text, params, plan.operation, plan.table, max_rows, max_response_bytes
    )


def _compile_plan(
    query: Query,
    catalog: ProjectCatalog,
    principal: Principal,
    max_response_bytes: int,
    in_batch: bool,
) -> tuple[Plan, list[Any]]:
    """The whole compiler on one request: its plan, and its parameters."""
    write = query.operation != "select"
    table = perm.resolve_table(catalog, query.table, principal, write=write)
    owner = perm.row_owner(table, principal, write=write)
    b = Builder(query, table, principal, catalog.schema_name, owner, max_response_bytes, in_batch)
    if query.operation == "select":
        composed = _compile_select(b, query)
    elif query.operation == "insert":
        composed = _compile_insert(b, query)
    else:
        composed = _compile_mutation(b, query, _effective_max_rows(query, principal))
    # the parameters in text order → each source's positions (maxRows is bound twice)
    positions: dict[int, list[int]] = {}
    for position, param in enumerate(b.params):
        positions.setdefault(id(param), []).append(position)
    plan = Plan(
        text=composed.as_string(),
        template=tuple(None if p.source is not None else p.value for p in b.params),
        steps=tuple(
            (tuple(positions.get(id(param), ())) if param is not None else (), source)
            for param, source in b.steps
        ),
        operation=query.operation,
        table=table.name,
        mutation=write and query.operation != "insert",
    )
    return plan, [p.value for p in b.params]
