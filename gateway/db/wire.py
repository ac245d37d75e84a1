"""The gateway's statements on the wire: one pipeline, one Sync, prepared once per connection.

psycopg's cursors cost a cursor, a Transformer, a result bookkeeping queue and (in pipeline
mode) a command queue per statement; a request of the gateway needs none of that. This
module drives libpq directly on a pooled connection, holding ``conn.lock`` like psycopg's
own cursors do: every statement of a unit is queued in pipeline mode, one Sync ends the
unit, and the results are read in one round trip.

**One implicit transaction.** In the extended protocol every message up to a Sync runs in
ONE implicit transaction, which the Sync commits, or rolls back when a statement failed
(the server then skips everything up to the Sync). So ``[settings, statements…, Sync]`` is
all-or-nothing without BEGIN or COMMIT, ``set_config(..., true)`` lasts to its end, and
each Execute still gets its own ``statement_timeout`` (PostgreSQL arms it per Execute).
The connection comes back IDLE either way: no ROLLBACK round trip after a failure.

**Prepared once per connection.** A statement is parsed under a name derived from its text
and its parameter types (``gw_`` + 24 hex digits of a BLAKE2b hash), then only bound and
executed. Which names a connection holds is tracked here (``WireState``, per connection
object, so a replaced connection starts empty):

- a name is registered only after its Parse answered COMMAND_OK: in a pipeline a failed
  statement makes the server skip the later messages, Parses included (the pitfall that
  made the gateway use ``prepare=False`` with psycopg's own cache);
- at most ``PREPARED_PER_CONNECTION`` names, least recently used first out: an evicted
  name is closed (a protocol Close message, which never fails, even for an unknown name)
  at the head of the next pipeline, before anything that could fail;
- a ``26000`` (no such prepared statement: a ``DISCARD ALL`` or a pooler that moved us to
  another server connection) forgets every name of the connection and runs the unit once
  more; nothing of the failed attempt was committed, the Sync rolled it back;
- a ``42P05`` (the name exists already: a unit cancelled after its Parse ran, before its
  answer was read, e.g. an admission timeout) registers the name and runs the unit once
  more, for the same reason. A name always stands for the same text and types.

Behind a transaction pooler (``GATEWAY_DB_POOLER=transaction``: the pool sets
``prepare_threshold=None`` on its connections) every statement is sent unnamed, Parse
+ Bind + Execute each time, in the same single pipeline: PgBouncer before 1.21 does not
track protocol-level prepared statements, and a named statement could land on another
server connection.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from time import monotonic
from typing import Any

from psycopg import AsyncConnection
from psycopg import errors as e
from psycopg._queries import PostgresQuery
from psycopg.abc import PQGen
from psycopg.adapt import Transformer
from psycopg.generators import fetch, send
from psycopg.pq import ConnStatus, DiagnosticField, ExecStatus, Format, PipelineStatus
from psycopg.pq.abc import PGconn, PGresult

# Names a connection keeps prepared. A project's query shapes repeat (the plans are cached
# per shape), so the hot ones stay; a long tail of shapes costs a Parse each, as before.
PREPARED_PER_CONNECTION = 256
# after a timeout, how long the cancellation and the unit's last answers may take before
# the connection is closed instead
CANCEL_GRACE_S = 0.25
# the SQLSTATE of a Bind/Execute naming a statement the server does not know
UNKNOWN_STATEMENT = "26000"
# the SQLSTATE of a Parse under a name the server already holds
DUPLICATE_STATEMENT = "42P05"

TEXT = Format.TEXT
_COMMAND_OK = ExecStatus.COMMAND_OK
_FATAL_ERROR = ExecStatus.FATAL_ERROR
_PIPELINE_SYNC = ExecStatus.PIPELINE_SYNC
_BAD = ConnStatus.BAD


class Bound:
    """One statement with its parameters dumped: what goes into a Bind message."""

    __slots__ = ("formats", "params", "query", "types")

    def __init__(
        self,
        query: bytes,
        params: Sequence[bytes | None] | None,
        types: Sequence[int] | None,
        formats: Sequence[int] | None,
    ) -> None:
        self.query = query
        self.params = params
        self.types = types
        self.formats = formats


class WireState:
    """What the wire layer knows about one connection: its prepared names, its adapters."""

    __slots__ = ("closing", "names", "tx")

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        # LRU: name → None, most recently used last
        self.names: OrderedDict[bytes, None] = OrderedDict()
        # evicted names still prepared on the server, closed at the next pipeline's head
        self.closing: list[bytes] = []
        # psycopg's adapters for this connection (dumpers by Python type, loaders by OID):
        # built once per connection instead of once per cursor
        self.tx = Transformer(conn)

    def bind(self, query: str | bytes, params: Sequence[Any]) -> Bound:
        """``query`` with ``%s`` placeholders and its parameters, dumped by psycopg's rules."""
        pgq = PostgresQuery(self.tx)
        pgq.convert(query, params)
        return Bound(pgq.query, pgq.params, pgq.types, pgq.formats)

    def forget(self) -> None:
        self.names.clear()
        self.closing.clear()


def state_of(conn: AsyncConnection[Any]) -> WireState:
    """The connection's own state, kept as an attribute of the connection object: it
    lives and dies with it (a replaced connection starts with no names). Not a weak
    mapping: the Transformer refers to the connection, which would keep it alive."""
    try:
        return conn._gateway_wire  # type: ignore[attr-defined,no-any-return]
    except AttributeError:
        state = conn._gateway_wire = WireState(conn)  # type: ignore[attr-defined]
        return state


def uses_prepared(conn: AsyncConnection[Any]) -> bool:
    """Named statements unless the pool said otherwise (``prepare_threshold=None``:
    behind a transaction pooler, see ``gateway.db.pool.connection_kwargs``)."""
    return conn.prepare_threshold is not None


# (query, parameter types) → name: the query bytes come from psycopg's own conversion
# cache, so their hash is computed once; bounded by clearing (names are recomputable)
_NAMES: dict[tuple[bytes, tuple[int, ...] | None], bytes] = {}
_NAMES_MAX = 4096


def statement_name(bound: Bound) -> bytes:
    """The same text with the same parameter types is the same statement on every connection."""
    types = tuple(bound.types) if bound.types is not None else None
    key = (bound.query, types)
    name = _NAMES.get(key)
    if name is None:
        digest = hashlib.blake2b(bound.query, digest_size=12)
        if types:
            digest.update(repr(types).encode())
        name = b"gw_" + digest.hexdigest().encode()
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[key] = name
    return name


class Timeout(e.OperationalError):
    """No answer within ``exchange``'s ``timeout`` (the unit may or may not have run)."""


async def exchange(
    conn: AsyncConnection[Any],
    statements: Sequence[Bound],
    result_format: Format = TEXT,
    *,
    timeout: float | None = None,
) -> list[PGresult]:
    """Run ``statements`` as one pipeline ending in one Sync; one result per statement.

    Each result is TUPLES_OK/COMMAND_OK, FATAL_ERROR (the failing statement, its Parse's
    error if that failed: everything before it was rolled back with it) or
    PIPELINE_ABORTED (skipped after a failure). One more FATAL_ERROR result after them
    is the commit's failure at the Sync (a deferred constraint).
    A lost connection raises ``psycopg.OperationalError`` with ``conn.closed`` true.

    ``timeout`` (seconds) bounds the wait for the answers in the caller's own task, with
    the timer psycopg's wait arms anyway (no task, no extra loop turn). Past it the unit is
    cancelled on the server and its answers read, within ``CANCEL_GRACE_S`` each, so the
    connection stays usable; a server that answers neither gets the connection closed.
    Either way ``Timeout`` is raised: the unit may or may not have run.
    """
    state = state_of(conn)
    deadline = None if timeout is None else monotonic() + timeout
    results = await _exchange(conn, state, statements, result_format, deadline)
    for res in results:
        if res.status != _FATAL_ERROR:
            continue
        sqlstate = _sqlstate(res)
        if sqlstate == UNKNOWN_STATEMENT:
            # our names are gone on the server (DISCARD ALL, another backend behind a
            # pooler): nothing was committed, so start over with fresh Parses
            state.forget()
            return await _exchange(conn, state, statements, result_format, deadline)
        if sqlstate == DUPLICATE_STATEMENT:
            # a Parse whose answer we never read (the unit was cancelled) had run: the
            # name is now registered; nothing was committed, so run the unit again
            return await _exchange(conn, state, statements, result_format, deadline)
        break
    return results


async def _exchange(
    conn: AsyncConnection[Any],
    state: WireState,
    statements: Sequence[Bound],
    result_format: Format,
    deadline: float | None = None,
) -> list[PGresult]:
    pgconn = conn.pgconn
    prepared = uses_prepared(conn)
    async with conn.lock:
        if pgconn.status == _BAD:
            raise e.OperationalError("the connection is closed")
        pgconn.enter_pipeline_mode()
        try:
            # per message in order: the name its Parse registers, b"" for a Close, or None
            # for a statement's own result
            expect: list[bytes | None] = []
            closing = state.closing
            if closing:
                for name in closing:
                    pgconn.send_close_prepared(name)
                    expect.append(b"")
                state.closing = []
            names = state.names
            parsing: set[bytes] = set()
            for st in statements:
                if not prepared:
                    pgconn.send_query_params(
                        st.query, st.params, st.types, st.formats, result_format
                    )
                    expect.append(None)
                    continue
                name = statement_name(st)
                if name in names:
                    names.move_to_end(name)
                elif name not in parsing:  # a batch may repeat a statement: one Parse
                    parsing.add(name)
                    pgconn.send_prepare(name, st.query, st.types)
                    expect.append(name)
                pgconn.send_query_prepared(name, st.params, st.formats, result_format)
                expect.append(None)
            pgconn.pipeline_sync()
            communicate = _communicate(pgconn, len(expect))
            if deadline is None:
                raw = await conn.wait(communicate)
            else:
                try:
                    raw = await conn.wait(communicate, timeout=max(deadline - monotonic(), 0.0))
                except e._WaitTimeout:
                    await _cancel(conn, communicate)
                    raise Timeout("no answer in time") from None
        finally:
            _leave_pipeline(pgconn)
    results: list[PGresult] = []
    failed_parse: PGresult | None = None
    for kind, res in zip(expect, raw, strict=False):
        if kind is None:
            # a statement whose Parse failed (e.g. an unknown table) reports that error
            results.append(failed_parse or res)
            failed_parse = None
        elif kind:
            if res.status == _COMMAND_OK:
                _register(state, kind)
            else:
                failed_parse = res
                if _sqlstate(res) == DUPLICATE_STATEMENT:
                    # prepared on the server already, under the same text and types
                    _register(state, kind)
    # anything after the statements' results is the Sync's own: a failed commit
    # (e.g. a deferred constraint), answered after every statement succeeded
    results.extend(raw[len(expect) :])
    return results


async def _cancel(conn: AsyncConnection[Any], communicate: PQGen[list[PGresult]]) -> None:
    """After a timeout: cancel the unit on the server and read its answers, so that the
    connection can be reused; if either takes longer than ``CANCEL_GRACE_S`` (a server
    that does not answer at all), close the connection instead."""
    try:
        await conn.cancel_safe(timeout=CANCEL_GRACE_S)
        await conn.wait(communicate, timeout=CANCEL_GRACE_S)
    except Exception:
        conn.pgconn.finish()


def _register(state: WireState, name: bytes) -> None:
    names = state.names
    names[name] = None
    while len(names) > PREPARED_PER_CONNECTION:
        evicted, _ = names.popitem(last=False)
        state.closing.append(evicted)


def _communicate(pgconn: PGconn, expected: int) -> PQGen[list[PGresult]]:
    """Flush the pipeline, then read every result up to the Sync's (``expected`` at least:
    one per message, then a failed commit's error if there is one)."""
    yield from send(pgconn)
    results: list[PGresult] = []
    while True:
        try:
            res = yield from fetch(pgconn)
        except e.OperationalError:
            # EOF after the server's goodbye: report the goodbye (its SQLSTATE, 57P01…,
            # tells gateway.db.pool.retry_is_safe that nothing was applied)
            for earlier in reversed(results):
                if earlier.status == _FATAL_ERROR:
                    raise _lost(earlier, pgconn) from None
            raise
        if res is None:
            # the end of one statement's results; a broken connection answers None forever
            if pgconn.status == _BAD:
                raise e.OperationalError(pgconn.get_error_message() or "connection lost")
            continue
        if res.status == _PIPELINE_SYNC:
            if len(results) < expected:  # pragma: no cover - a protocol violation
                raise e.InternalError(f"{len(results)} results for {expected} messages")
            return results
        if res.status == _FATAL_ERROR and pgconn.status == _BAD:
            raise _lost(res, pgconn)
        results.append(res)


def _lost(res: PGresult, pgconn: PGconn) -> e.OperationalError:
    """The connection broke: an OperationalError, with the server's SQLSTATE when it said
    goodbye (``57P01``…: ``gateway.db.pool.retry_is_safe`` reads it)."""
    exc = e.error_from_result(res, encoding=pgconn._encoding)
    if isinstance(exc, e.OperationalError):
        return exc
    return e.OperationalError(res.get_error_message(pgconn._encoding) or "connection lost")


def _leave_pipeline(pgconn: PGconn) -> None:
    """Back to normal mode; a connection left with unread results is closed (the pool
    replaces it) rather than handed on in an unknown state."""
    if pgconn.pipeline_status == PipelineStatus.OFF:
        return
    try:
        pgconn.exit_pipeline_mode()
    except Exception:
        pgconn.finish()


def _sqlstate(res: PGresult) -> str | None:
    raw = res.error_field(DiagnosticField.SQLSTATE)
    return raw.decode("ascii", "replace") if raw is not None else None


def raise_for(res: PGresult, conn: AsyncConnection[Any]) -> None:
    """A failed statement's result as psycopg's exception for its SQLSTATE."""
    raise e.error_from_result(res, encoding=conn.pgconn._encoding)


def first_row(res: PGresult, state: WireState) -> tuple[Any, ...] | None:
    """The first row of a TUPLES_OK result, loaded as psycopg would (typed Python values)."""
    if res.ntuples == 0:
        return None
    tx = state.tx
    tx.set_pgresult(res)
    return tx.load_row(0, tuple)


def all_rows(res: PGresult, state: WireState) -> list[tuple[Any, ...]]:
    tx = state.tx
    tx.set_pgresult(res)
    return tx.load_rows(0, res.ntuples, tuple)
