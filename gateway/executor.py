"""Running compiled statements: one transaction, one network round trip, mapped errors.

The pool hands out AUTOCOMMIT connections (so admission, a separate statement, commits
on its own). Here BEGIN, the transaction-local settings, every statement and COMMIT are
queued in psycopg's pipeline mode and flushed together with a single Sync: the server
answers them in one go, so a query costs one round trip however many statements a batch
holds. When statement k fails, the server skips the rest up to the Sync (COMMIT
included) and psycopg sends a ROLLBACK — one extra round trip, on failure only — so the
connection always comes back idle with nothing committed.

Settings are transaction-local (``set_config(..., true)`` = ``SET LOCAL``): the role the
project's statements run as, ``statement_timeout``, and ``TimeZone = UTC`` so timestamps
in the JSON text the compiler produces do not depend on the server's configuration.

PostgreSQL errors become contract errors by SQLSTATE; messages never carry SQL or the
server's text (the real error is logged on ``gateway.executor``). Connection-level
failures propagate unchanged for the caller to answer 503.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from gateway.compiler import ROW_LIMIT_MARKER, CompiledStatement
from gateway.errors import GatewayError

log = logging.getLogger("gateway.executor")

_SETUP = sql.SQL(
    "SELECT set_config('role', %s, true), set_config('statement_timeout', %s, true),"
    " set_config('TimeZone', 'UTC', true)"
)
_BEGIN = sql.SQL("BEGIN")
_COMMIT = sql.SQL("COMMIT")
_ROW_LIMIT = re.compile(re.escape(ROW_LIMIT_MARKER) + r"(\d+)")

# SQLSTATE → (contract code, message for the API's user).
_BY_SQLSTATE: dict[str, tuple[str, str]] = {
    "23505": ("UNIQUE_VIOLATION", "a row with the same unique value already exists"),
    "23P01": ("UNIQUE_VIOLATION", "the row conflicts with an existing row"),
    "23503": ("FOREIGN_KEY_VIOLATION", "the row references a row that does not exist"),
    "23001": ("FOREIGN_KEY_VIOLATION", "other rows still reference this row"),
    "23502": ("NOT_NULL_VIOLATION", "a required column is missing or null"),
    "23514": ("CHECK_VIOLATION", "a value does not satisfy a check constraint"),
    "57014": ("QUERY_TIMEOUT", "the query took too long and was cancelled"),
    "55P03": ("QUERY_TIMEOUT", "the rows are locked by another transaction; try again"),
}
_INVALID_VALUE = ("INVALID_VALUE", "a value is not valid for its column")
_QUERY_FAILED = ("QUERY_FAILED", "the query failed")


@dataclass(frozen=True, slots=True)
class StatementResult:
    data_json: str | None
    count: int
    operation: str
    table: str
    matched: int | None = None


def _propagates(exc: BaseException) -> bool:
    """Failures of the connection or the server, not of the query: the caller's 503."""
    if not isinstance(exc, psycopg.Error):
        return True
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: the connection broke, or a client-side error (e.g. PipelineAborted
        # without a cause) — only OperationalError is a connection failure, but nothing
        # here can map the others meaningfully either.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state.startswith(("08", "53", "57P", "58"))


def map_pg_error(exc: psycopg.Error, max_rows: int | None = None) -> GatewayError:
    """A PostgreSQL error → the contract's ``GatewayError`` (message free of server text)."""
    state = exc.sqlstate or ""
    diag = exc.diag
    details: dict[str, Any] = {}
    if state == "22P02":
        m = _ROW_LIMIT.search(diag.message_primary or "")
        if m is not None:
            return GatewayError(
                "ROW_LIMIT_EXCEEDED",
                f"the filters match {m.group(1)} rows, more than maxRows ({max_rows}); "
                "nothing was changed",
                details={"maxRows": max_rows, "matchedRows": int(m.group(1))},
            )
    if state in _BY_SQLSTATE:
        code, message = _BY_SQLSTATE[state]
    elif state.startswith("22"):
        code, message = _INVALID_VALUE
    else:
        code, message = _QUERY_FAILED
    if code in ("UNIQUE_VIOLATION", "FOREIGN_KEY_VIOLATION", "CHECK_VIOLATION"):
        if diag.constraint_name:
            details["constraint"] = diag.constraint_name
    elif code == "NOT_NULL_VIOLATION" and diag.column_name:
        details["column"] = diag.column_name
        message = f"column '{diag.column_name}' must not be null"
    return GatewayError(code, message, details=details or None)


def _with_index(err: GatewayError, index: int | None) -> GatewayError:
    if index is None:
        return err
    details = dict(err.details) if isinstance(err.details, dict) else {}
    details["index"] = index
    err.details = details
    return err


async def run_transaction(
    conn: psycopg.AsyncConnection[Any],
    statements: list[CompiledStatement],
    *,
    role: str,
    statement_timeout_ms: int,
    batch: bool | None = None,
) -> list[StatementResult]:
    """Run ``statements`` all-or-nothing as ``role``; results in order.

    A failing statement k raises its ``GatewayError`` and nothing is committed. For a
    batch (``batch=True``, or by default when there is more than one statement) its
    ``details`` carry ``"index": k``; a single ``/query`` keeps the original's details.
    ``psycopg.OperationalError`` (connection lost, server shutting down) propagates as is.
    The connection is always left idle, with no transaction open.
    """
    if not statements:
        return []
    in_batch = len(statements) > 1 if batch is None else batch
    setup = conn.cursor()
    cursors: list[psycopg.AsyncCursor[Any]] = []
    try:
        # Explicit BEGIN/COMMIT rather than conn.transaction(): the latter syncs (waits
        # for the server) on entry and on exit, turning one round trip into four.
        # prepare=False: psycopg's prepared-statement cache records a statement as
        # prepared when its Parse is queued; if an earlier statement fails, the server
        # skips that Parse and the next use of the "prepared" name fails (26000).
        async with conn.pipeline():
            await conn.execute(_BEGIN, prepare=False)
            await setup.execute(_SETUP, [role, str(int(statement_timeout_ms))], prepare=False)
            for st in statements:
                cur = conn.cursor()
                await cur.execute(st.sql, st.params, prepare=False)
                cursors.append(cur)
            await conn.execute(_COMMIT, prepare=False)
        rows = [await cur.fetchone() for cur in cursors]
    except psycopg.Error as exc:
        await _ensure_idle(conn)
        if _propagates(exc):
            raise
        index = _failed_index(setup, cursors)
        max_rows = statements[index].max_rows if index is not None else None
        err = map_pg_error(exc, max_rows)
        if err.code == "QUERY_FAILED":
            log.error(
                "statement %s failed: sqlstate=%s %s", index, exc.sqlstate, exc, exc_info=False
            )
        else:
            log.info("statement %s refused: sqlstate=%s", index, exc.sqlstate)
        raise _with_index(err, index if in_batch else None) from None
    finally:
        await setup.close()
        for cur in cursors:
            await cur.close()

    results: list[StatementResult] = []
    for i, (st, row) in enumerate(zip(statements, rows, strict=True)):
        if row is None:  # pragma: no cover - every compiled statement answers one row
            raise _with_index(GatewayError(*_QUERY_FAILED), i)
        data, count, matched = row
        if st.max_rows is not None and matched is not None and matched > st.max_rows:
            # Unreachable while the compiler's guard aborts the transaction; kept so a
            # compiler change can never turn into a silent over-limit write report.
            raise _with_index(
                GatewayError(
                    "ROW_LIMIT_EXCEEDED",
                    f"the filters match {matched} rows, more than maxRows ({st.max_rows})",
                    details={"maxRows": st.max_rows, "matchedRows": matched},
                ),
                i if in_batch else None,
            )
        results.append(StatementResult(data, int(count), st.operation, st.table, matched))
    return results


def _failed_index(
    setup: psycopg.AsyncCursor[Any], cursors: list[psycopg.AsyncCursor[Any]]
) -> int | None:
    """The statement whose error this is: the first without a result (None: setup/COMMIT)."""
    if not _has_result(setup):
        return None
    for i, cur in enumerate(cursors):
        if not _has_result(cur):
            return i
    return None


def _has_result(cur: psycopg.AsyncCursor[Any]) -> bool:
    res = cur.pgresult
    return res is not None and res.status == psycopg.pq.ExecStatus.TUPLES_OK


async def _ensure_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """Leave no transaction open on a connection going back to the pool."""
    if conn.closed:
        return
    status = conn.info.transaction_status
    if status in (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR):
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error:  # pragma: no cover - the pool discards a broken connection
            log.warning("rollback after a failed transaction failed", exc_info=True)
