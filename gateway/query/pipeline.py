"""One request's way through the gateway: admission → plan → SQL → response.

The routes hand over the key and the raw body; the pipeline answers with an ``Outcome``
(status, body bytes, headers, and the facts the request log needs). No Starlette here,
so tests and benchmarks can drive it without HTTP.

Every keyed surface admits through ``Pipeline.admitted`` (the data API's /query,
/batch and /schema, the auth API, the jobs API, realtime streams), and every refusal
becomes an answer in ``Outcome.refuse``, in the surface's envelope.

Database round trips per admitted request: one for admission (key, rate limit and
quota in one statement, committed on its own), one for the query (the settings and
the statements in one pipeline, one implicit transaction: gateway/db/wire.py). A metadata
cache miss adds one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.admission.admitter import Admitter
from gateway.admission.coalescer import Passenger
from gateway.admission.decision import Admission
from gateway.admission.headers import admission_headers
from gateway.auth.tokens import token_hash
from gateway.db.pool import acquire, checkout_deadline, run_with_retry
from gateway.db.share import ProjectShare, Ride, default_share
from gateway.errors import GatewayError, service_unavailable
from gateway.metadata.cache import MetadataCache, ProjectNotFound, load_catalog
from gateway.metadata.catalog import ProjectCatalog
from gateway.query import contract, permissions
from gateway.query.compiler import CompiledStatement, compile_query
from gateway.query.envelope import data_body, error_body
from gateway.query.executor import StatementResult, run_transaction, with_index
from gateway.quotas.plans import request_grows
from gateway.settings import Settings

log = logging.getLogger("gateway.pipeline")

Conn = psycopg.AsyncConnection[Any]
# a surface's error body: the data API's (``query.envelope.error_body``), the auth
# API's (``auth.rules.error_body``), the jobs API's (``http.jobs.jobs_error_body``)
Envelope = Callable[[GatewayError], bytes]


@dataclass
class Outcome:
    """What the route sends back, and what the request log records about it."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    project_id: str | None = None
    key_id: str | None = None
    operation: str | None = None
    table: str | None = None
    error_code: str | None = None
    row_count: int | None = None
    # how admission decided a refusal: "rate_limited", "quota_exceeded" or "local_deny"
    admission: str | None = None
    # the request log's path when the route sets it (the jobs API); else derived from kind
    path: str | None = None
    # the cell whose pipeline answered (per-cell metrics, gateway/cells/)
    cell: str = "home"

    def refuse(self, error: GatewayError, envelope: Envelope = error_body) -> Outcome:
        """This outcome turned into the refusal ``error``, for every surface: its status,
        its body in ``envelope``, its headers over the ones already set (the rate-limit
        headers once admitted), its code, and the project, key and admission decision it
        names (a refusal after the key was recognised is still the project's request)."""
        if self.project_id is None and error.project_id is not None:
            self.project_id, self.key_id = error.project_id, error.key_id
        self.admission = error.admission
        self.status = error.status
        self.body = envelope(error)
        if error.headers:
            self.headers = {**self.headers, **error.headers}
        self.error_code = error.code
        return self

    def refuse_exception(self, error: Exception, envelope: Envelope = error_body) -> Outcome:
        """A refusal, or a database that went away (503, ``Retry-After: 1``); anything
        else is a bug and propagates."""
        if isinstance(error, GatewayError):
            return self.refuse(error, envelope)
        if isinstance(error, psycopg.OperationalError):
            log.warning("database unavailable: %s", str(error).strip().splitlines()[:1])
            return self.refuse(service_unavailable(), envelope)
        raise error


# what a surface runs once admitted, on the admission's connection
Work = Callable[[Conn, Admission, Outcome], Awaitable[None]]


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        *,
        metadata: MetadataCache | None = None,
        admitter: Admitter | None = None,
        cell: str = "home",
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.cell = cell  # named on every outcome: the per-cell metrics
        # False while the cell's database is known to be down (its LISTEN connection is):
        # requests are refused at once instead of waiting for the pool (gateway/cells/)
        self.reachable: Callable[[], bool] = _always
        # The instance's metadata cache (gateway/metadata.py); without one, every request
        # loads its catalog (tests and benchmarks that want no cache).
        self.metadata = metadata
        # Key, rate limit and quota in one statement; keeps this instance's local denies.
        self.admitter = admitter or Admitter(settings)
        # one project's most connections at once (GATEWAY_POOL_MAX_PER_PROJECT)
        # how long an admitted request may wait for its project's slot: the statements
        # holding the slots end within the statement timeout
        self.admitted_wait_s = (settings.statement_timeout_ms / 1000.0) + settings.pool_timeout_s
        self.share = ProjectShare(
            settings.pool_max_per_project or default_share(getattr(pool, "max_size", 1)),
            admitted_wait_s=self.admitted_wait_s,
        )
        # requests waiting for their project's share ride along in the coalesced
        # admission statements (docs/performance.md, "The project's share under one busy
        # project"): no connection of their own, counted once answered, then served
        coalescer = self.admitter.coalescer
        if coalescer is not None:
            coalescer.take = self._take_rides

    def _take_rides(self) -> list[Passenger]:
        """The waiting requests a coalesced statement being formed takes along."""
        rides = self.share.take_rides()
        if not rides:
            return []
        sent_at = self.admitter.clock()
        passengers = []
        for ride in rides:
            passenger = Passenger(
                ride.args, lambda answer, ride=ride: self._ridden(ride, answer, sent_at)
            )
            ride.passenger = passenger
            passengers.append(passenger)
        return passengers

    def _ridden(self, ride: Ride, answer: Any, sent_at: float) -> None:
        """A passenger's row (or the exception that ended it), decided as ``admit``
        decides, passed to the share: the request's wait ends or moves ahead."""
        key_hash, cost, grows, _session = ride.args
        decided = self.admitter.answer(answer, key_hash, sent_at, cost=cost, grows=grows)
        self.share.ride_answered(ride, decided)

    # --- the pieces -----------------------------------------------------------------

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A live pooled connection; pool exhausted or database unreachable → 503."""
        async with acquire(self.pool) as conn:
            yield conn

    async def admit(
        self,
        conn: psycopg.AsyncConnection[Any],
        key: str | None,
        cost: int,
        *,
        key_hash: str | None = None,
        session_hash: str | None = None,
        grows: bool = False,
    ) -> Admission:
        """Key, rate limit and the quotas (and the session, when there is one): one
        statement, committed on its own. ``grows``: the request inserts or updates (the
        database-size quota)."""
        return await self.admitter.admit(
            conn, key, cost, key_hash=key_hash, session_hash=session_hash, grows=grows
        )

    async def catalog(self, conn: psycopg.AsyncConnection[Any], project_id: str) -> ProjectCatalog:
        if self.metadata is None:
            return await load_catalog(conn, project_id)
        try:
            # A miss loads on the connection the request already holds (no 2nd checkout).
            return await self.metadata.get(project_id, conn=conn)
        except ProjectNotFound:
            raise GatewayError(
                "INVALID_API_KEY", "the API key's project no longer exists"
            ) from None

    # --- the endpoints --------------------------------------------------------------

    async def query(
        self,
        key: str | None,
        body: bytes,
        session: str | None = None,
        key_hash: str | None = None,
    ) -> Outcome:
        return await self._run(key, body, batch=False, session=session, key_hash=key_hash)

    async def batch(
        self,
        key: str | None,
        body: bytes,
        session: str | None = None,
        key_hash: str | None = None,
    ) -> Outcome:
        return await self._run(key, body, batch=True, session=session, key_hash=key_hash)

    async def schema(
        self, key: str | None, session: str | None = None, key_hash: str | None = None
    ) -> Outcome:
        async def work(conn: Conn, admission: Admission, out: Outcome) -> None:
            catalog = await self.catalog(conn, admission.project_id)
            out.body = orjson.dumps(permissions.schema_view(catalog, admission.principal))

        return await self.admitted(key, cost=1, work=work, session=session, key_hash=key_hash)

    # --- plumbing -------------------------------------------------------------------

    async def _run(
        self,
        key: str | None,
        body: bytes,
        *,
        batch: bool,
        session: str | None = None,
        key_hash: str | None = None,
    ) -> Outcome:
        cost = 1
        parsed: Any = None
        parse_error: GatewayError | None = None
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parse_error = GatewayError("INVALID_QUERY", "the request body is not valid JSON")
        if batch and isinstance(parsed, dict) and isinstance(parsed.get("queries"), list):
            # A batch costs one request per query (bounded by the contract's maximum).
            cost = max(1, min(len(parsed["queries"]), contract.MAX_BATCH))
        # quotas: inserts and updates are refused while the project is over its database size
        grows = request_grows(parsed, batch=batch)

        async def work(conn: Conn, admission: Admission, out: Outcome) -> None:
            if parse_error is not None:
                raise parse_error
            out.table = "batch" if batch else _peek_table(parsed)
            out.operation = "BATCH" if batch else _peek_operation(parsed)
            queries = (
                contract.parse_batch_body(parsed) if batch else [contract.parse_query_body(parsed)]
            )
            catalog = await self.catalog(conn, admission.project_id)
            statements = [
                _compile(q, i, catalog, admission, batch, self.settings.max_response_bytes)
                for i, q in enumerate(queries)
            ]
            results = await run_transaction(
                conn,
                statements,
                role=admission.schema_name,
                statement_timeout_ms=self.settings.statement_timeout_ms,
                batch=batch,
                key_type=admission.principal.key_type,
                user_id=admission.principal.user_id,
            )
            if batch:
                out.body = _batch_body(results)
                out.row_count = sum(r.count for r in results)
            else:
                result = results[0]
                out.body = data_body(result.data_json, result.count)
                out.row_count = result.count

        return await self.admitted(
            key, cost=cost, work=work, session=session, grows=grows, key_hash=key_hash
        )

    async def admitted(
        self,
        key: str | None,
        *,
        cost: int,
        work: Work,
        session: str | None = None,
        key_hash: str | None = None,
        session_hash: str | None = None,
        local_deny: bool = True,
        grows: bool = False,
        envelope: Envelope | None = error_body,
        out: Outcome | None = None,
        rate_headers: bool = True,
    ) -> Outcome:
        """The one way into the database for a request that costs ``cost`` requests.

        The local deny (no connection, no round trip), then admission (one statement,
        committed on its own), then ``work(conn, admission, out)`` on the same connection
        — it loads the catalog with ``self.catalog`` when it needs it and fills ``out``.
        /query, /batch, /schema, the auth API, the jobs API and the opening of a realtime
        stream all come through here, so they share the order of checks, the pool share,
        the retry on a lost connection and the request-log facts.

        A refusal anywhere becomes the outcome (``Outcome.refuse``) in ``envelope``, the
        surface's error body; with ``envelope=None`` it is raised instead (a
        ``GatewayError``, or ``psycopg.OperationalError`` when the database went away),
        ``out`` already naming the project once admitted: the auth API's refusals can
        also come after the connection is given back, so it renders them itself.
        ``rate_headers``: the answer carries the rate-limit headers (the auth API's
        answers do not, as in the original). ``key_hash`` and ``session_hash``: the
        hashes when the caller computed them already (routing to a cell hashes the key;
        a realtime ticket carries both): each is computed once per request.
        ``local_deny=False`` skips the local deny: a redeemed realtime ticket, which
        carries the hashes only (EventSource sends no headers).
        """
        if out is None:
            out = Outcome(status=200, body=b"")
        out.cell = self.cell
        # the project's share of the pool (gateway/db/share.py): the slot this request
        # holds, and the admission of a request that found no slot free after admission
        slot: str | None = None
        over_share: Admission | None = None
        learning = False  # this request's admission teaches the share its key's project
        try:
            if not self.reachable():
                raise service_unavailable("the project's database is unavailable, retry shortly")
            # a project known to be over its limit is refused here: no pool connection, no
            # round trip (the local deny; it never admits anything)
            if local_deny:
                key_hash = self.admitter.check_local(key, key_hash)
            assert key_hash is not None  # a redeemed ticket always carries its key's hash
            if session_hash is None and session is not None:
                # the session is resolved inside the admission statement, never cached here
                session_hash = token_hash(session)
            admitter = self.admitter
            ride: Ride | None = None

            async def unit(conn: Conn) -> None:
                nonlocal slot, over_share
                if ride is not None and ride.admission is not None:
                    # admitted while it waited for its slot, in another request's statement
                    admission = await self._ride_admission(ride, conn)
                else:
                    admission = await admitter.admit(
                        conn, key, cost, key_hash=key_hash, session_hash=session_hash, grows=grows
                    )
                project_id = admission.project_id
                out.project_id, out.key_id = project_id, admission.key_id
                if rate_headers:
                    out.headers = admission_headers(admission)
                    out.headers["X-Project-Id"] = project_id
                self.share.remember(key_hash, project_id)
                if learning:
                    self.share.learned(key_hash)  # the key's other requests go on
                if slot is None:
                    if not self.share.try_enter(project_id):
                        over_share = admission  # give the connection back, wait below
                        return
                    slot = project_id
                await work(conn, admission, out)

            deadline = (
                checkout_deadline(self.pool, None) if self.pool is not None else time.monotonic()
            )
            # a key seen before takes its slot before admission (no slot in time: 503,
            # not counted); of a key not seen yet, one request is admitted at a time
            known, learning = await self.share.learn(key_hash, deadline)
            if known is not None:
                if not self.share.try_enter(known):
                    if admitter.coalescer is not None and admitter.enabled:
                        # while it waits, an admission statement may take it along
                        ride = Ride((key_hash, cost, grows, session_hash))
                    await self.share.enter(known, deadline, ride=ride)
                slot = known
            # Pool exhausted, queue full or database down → 503 with Retry-After within
            # GATEWAY_POOL_TIMEOUT_S; a session the server ended is run again once.
            await run_with_retry(self.pool, unit)
            if over_share is not None:
                # counted already, so served: first in the project's queue, for as long
                # as the project's running statements can take to end
                admitted_as = over_share
                await self.share.enter(
                    admitted_as.project_id, time.monotonic() + self.admitted_wait_s, admitted=True
                )
                slot = admitted_as.project_id
                await run_with_retry(self.pool, lambda conn: work(conn, admitted_as, out))
        except (GatewayError, psycopg.OperationalError) as error:
            if envelope is None:
                raise
            return out.refuse_exception(error, envelope)
        finally:
            if learning:
                self.share.learned(key_hash)
            if slot is not None:
                self.share.leave(slot)
        return out

    async def _ride_admission(self, ride: Ride, conn: Conn) -> Admission:
        """A taken ride's admission, once the request holds its slot and a connection:
        answered already, or in flight, or still queued (then this connection carries it)."""
        assert ride.admission is not None
        coalescer = self.admitter.coalescer
        if not ride.admission.done() and coalescer is not None and ride.passenger is not None:
            coalescer.carry(ride.passenger, conn)
        try:
            return await ride.admission
        except asyncio.CancelledError:
            if coalescer is not None and ride.passenger is not None:
                coalescer.drop(ride.passenger)  # its connection goes back to the pool
            raise
        except psycopg.OperationalError:
            # it carried the statement and the connection broke: when the retry on a
            # fresh connection is safe (nothing applied), it admits the request anew
            ride.admission = None
            raise

    @staticmethod
    def failed(out: Outcome, error: GatewayError) -> Outcome:
        """``out.refuse(error)`` in the data API's envelope (the realtime stream's call)."""
        return out.refuse(error)


def _always() -> bool:
    return True


def _compile(
    query: contract.Query,
    index: int,
    catalog: ProjectCatalog,
    admission: Admission,
    batch: bool,
    max_response_bytes: int,
) -> CompiledStatement:
    """Compile one query; in a batch, a refusal names the query's index."""
    try:
        return compile_query(
            query, catalog, admission.principal, max_response_bytes, in_batch=batch
        )
    except GatewayError as error:
        raise with_index(error, index if batch else None) from None


def _peek_table(parsed: Any) -> str | None:
    query = parsed.get("query") if isinstance(parsed, dict) else None
    table = query.get("table") if isinstance(query, dict) else None
    return table[:128] if isinstance(table, str) else None


def _peek_operation(parsed: Any) -> str | None:
    query = parsed.get("query") if isinstance(parsed, dict) else None
    operation = query.get("operation") if isinstance(query, dict) else None
    return operation.upper()[:16] if isinstance(operation, str) else None


def _batch_body(results: list[StatementResult]) -> bytes:
    parts = [
        b'{"data":'
        + (r.data_json.encode() if r.data_json is not None else b"null")
        + b',"count":'
        + str(r.count).encode()
        + b"}"
        for r in results
    ]
    return b'{"data":[' + b",".join(parts) + b'],"error":null,"status":200}'
