"""Coalesced admission: every admission waiting at one moment goes in ONE statement.

The database is the one part that does not scale out, and one project's decisions
serialise on its counter row. A statement per request pays, per request, a round trip,
a transaction, a commit and a wait for the row lock. So each instance keeps at most
``statements_max`` admission statements in flight (1 by default):

* A request that finds a free slot and nobody queued goes at once, in its own task,
  with the single ``gateway.admit`` — exactly today's path: no added latency when idle.
* While the slots are busy, arrivals queue. When a statement finishes, EVERY queued
  admission (up to ``batch_max``) goes together as the next statement
  (``gateway.admit_many`` over arrays, migration 0012), in arrival order.

No timer, no batching window: a batch forms only from requests that would have waited
for the database anyway, so coalescing can add no latency a request didn't already have.

Connections: a batch runs on the connection of one of its own requests (they each hold
one already, for their query), the most recent arrival's — its deadline is the latest of
the batch, so the statement's own timeout (that request's deadline) never cuts short a
request that still had time. The others' connections sit idle for that round trip, as
they would while queueing for the counter row.

Passengers: every statement formed also takes along the admissions of requests waiting
for their project's share of the pool (``take``, gateway/db/share.py), which hold no
connection; they are never the carrier. Passengers alone wait for a request with a
connection, or for their own request to bring one (``carry``) when its slot comes first.

Deadlines and cancellation, per request, as with one statement each:

* queued past its deadline (``GATEWAY_ADMISSION_TIMEOUT_MS`` after arrival): it leaves
  the queue → 503 with ``Retry-After: 1``;
* sent but its deadline passed: 503; the statement goes on for the others (its answer
  is dropped — like a timed-out single admit, it may have been counted);
* the request whose connection carries the statement: the statement's own timeout is
  its deadline (cancel on the server, close the connection if that hangs:
  ``gateway.db.wire.exchange``), and if that request is cancelled the statement is
  cancelled; the others in that batch get 503 with ``Retry-After: 1``;
* the connection lost with PostgreSQL saying it ended the session (nothing applied):
  the others go back to the head of the queue and are sent again on another connection;
  the carrier's own error goes to its request (whose retry runs it on a fresh one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection

from gateway.db.pool import retry_is_safe
from gateway.errors import GatewayError, service_unavailable

# An upper bound on one statement's arrays: a long queue goes as several statements
# rather than one that holds the counter rows for too long.
BATCH_MAX = 256

Row = tuple[Any, ...]
# one request's inputs to the admission statement: (key_hash, cost, ...)
Args = tuple[Any, ...]
# send(conn, [args, ...], deadline) -> one row per request, in order
Send = Callable[[AsyncConnection[Any], list[Args], float], Awaitable[list[Row]]]


@dataclass(eq=False, slots=True)
class _Waiter:
    args: Args
    conn: AsyncConnection[Any] | None  # None: a passenger, never the carrier
    deadline: float  # time.monotonic()
    future: asyncio.Future[Row]
    state: str = "queued"  # queued | sent | carrier
    gone: bool = False  # its request stopped waiting: nobody reads its future
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(eq=False, slots=True)
class Passenger:
    """The admission of a request that waits for its project's share of the pool
    (gateway/db/share.py) and holds no connection: a statement being formed takes it
    along (``Coalescer.take``). ``tell`` hears its row, or the exception that ended it."""

    args: Args
    tell: Callable[[Any], None]
    waiter: _Waiter | None = None  # once boarded


# the passengers a statement being formed takes along
Take = Callable[[], list[Passenger]]


class Coalescer:
    """At most ``statements_max`` admission statements in flight; the rest go together."""

    def __init__(
        self,
        send: Send,
        *,
        timeout_s: float,
        statements_max: int = 1,
        batch_max: int = BATCH_MAX,
    ) -> None:
        self.send = send
        self.timeout_s = timeout_s
        self.statements_max = max(1, statements_max)
        self.batch_max = max(1, batch_max)
        self.in_flight = 0
        self._queue: deque[_Waiter] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats = {
            "statements": 0,
            "coalesced": 0,
            "largest_batch": 0,
            "requeued": 0,
            "passengers": 0,
        }
        # the pool share's waiting requests, taken along by every statement formed
        self.take: Take | None = None

    def stats(self) -> dict[str, int]:
        return {**self._stats, "queued": len(self._queue), "in_flight": self.in_flight}

    async def admit(self, conn: AsyncConnection[Any], args: Args) -> Row:
        """The admission row for one request (``args``: its inputs to the statement,
        ``(key_hash, cost, ...)``); a timeout or a lost database is a 503."""
        deadline = time.monotonic() + self.timeout_s
        if self.in_flight < self.statements_max and not self._queue and not self._board():
            # idle: this request's own statement, at once, in its own task
            self.in_flight += 1
            self._stats["statements"] += 1
            try:
                return (await self.send(conn, [args], deadline))[0]
            finally:
                self.in_flight -= 1
                self._pump()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(args, conn, deadline, loop.create_future())
        self._queue.append(waiter)
        # one timer, not a wait with a timeout: a plain timer handle is the cheapest
        # deadline asyncio has (this runs for every queued request)
        timer = loop.call_at(loop.time() + (deadline - time.monotonic()), self._expire, waiter)
        if self.in_flight < self.statements_max:
            self._pump()  # passengers are queued, or only passengers were: this one carries
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._leave(waiter)
            if waiter.state == "carrier" and waiter.task is not None:
                waiter.task.cancel()  # its connection goes back to the pool: stop using it
            raise
        finally:
            timer.cancel()

    # --- internals --------------------------------------------------------------------

    def _expire(self, waiter: _Waiter) -> None:
        """A waiter's deadline: 503 unless it carries the batch's statement, which enforces
        its deadline itself (the statement's timeout), or its answer is in already."""
        if waiter.state == "carrier" or waiter.future.done():
            return
        self._leave(waiter)
        waiter.future.set_exception(service_unavailable("Admission timed out"))

    def _leave(self, waiter: _Waiter) -> None:
        waiter.gone = True
        if waiter.state == "queued":
            with contextlib.suppress(ValueError):
                self._queue.remove(waiter)

    def _board(self) -> bool:
        """Queue the waiting requests a statement can take along (``take``); True if any."""
        if self.take is None:
            return False
        passengers = self.take()
        if not passengers:
            return False
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.timeout_s
        for passenger in passengers:
            waiter = _Waiter(passenger.args, None, deadline, loop.create_future())
            timer = loop.call_at(loop.time() + self.timeout_s, self._expire, waiter)
            waiter.future.add_done_callback(_telling(passenger.tell, timer))
            passenger.waiter = waiter
            self._queue.append(waiter)
        self._stats["passengers"] += len(passengers)
        return True

    def carry(self, passenger: Passenger, conn: AsyncConnection[Any]) -> None:
        """The passenger's request holds a connection now (its slot came first): if its
        admission still waits in the queue, that connection can carry the queue."""
        waiter = passenger.waiter
        if waiter is not None and waiter.state == "queued" and not waiter.gone:
            waiter.conn = conn
            self._pump()

    def drop(self, passenger: Passenger) -> None:
        """The passenger's request stopped waiting (cancelled): as ``admit`` does for its
        own waiters, and its connection is no longer the statement's to use."""
        waiter = passenger.waiter
        if waiter is not None:
            self._leave(waiter)
            if waiter.state == "carrier" and waiter.task is not None:
                waiter.task.cancel()

    def _pump(self) -> None:
        """Send everything queued while there is a free slot."""
        if self.in_flight < self.statements_max and any(w.conn is not None for w in self._queue):
            self._board()
        while self._queue and self.in_flight < self.statements_max:
            batch = [self._queue.popleft() for _ in range(min(self.batch_max, len(self._queue)))]
            # the most recent arrival's connection, an open one if any; passengers alone
            # (no connection among them) wait for a request that has one
            carrier = _carrier(batch)
            if carrier is None:
                # more passengers queued than a statement holds: a request with a
                # connection further back carries this batch
                carrier = _carrier(self._queue)
                if carrier is None:
                    self._queue.extendleft(reversed(batch))
                    return
                self._queue.remove(carrier)
                if len(batch) >= self.batch_max:
                    self._queue.appendleft(batch.pop())
                batch.append(carrier)
            for w in batch:
                w.state = "sent"
            carrier.state = "carrier"
            self.in_flight += 1
            self._stats["statements"] += 1
            if len(batch) > 1:
                self._stats["coalesced"] += len(batch)
            self._stats["largest_batch"] = max(self._stats["largest_batch"], len(batch))
            task = asyncio.ensure_future(self._run(batch, carrier))
            carrier.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Waiter], carrier: _Waiter) -> None:
        assert carrier.conn is not None
        try:
            rows = await self.send(carrier.conn, [w.args for w in batch], carrier.deadline)
        except BaseException as exc:  # every waiter must hear of it
            self._failed(batch, carrier, exc)
            if not isinstance(exc, asyncio.CancelledError | Exception):
                raise
        else:
            for w, row in zip(batch, rows, strict=True):
                if not w.gone and not w.future.done():
                    w.future.set_result(row)
        finally:
            self.in_flight -= 1
            self._pump()

    def _failed(self, batch: list[_Waiter], carrier: _Waiter, exc: BaseException) -> None:
        others = [w for w in batch if w is not carrier and not w.gone and not w.future.done()]
        cause = exc.__cause__ if isinstance(exc, GatewayError) else exc
        if (
            others
            and carrier.conn is not None
            and carrier.conn.closed
            and isinstance(cause, psycopg.OperationalError)
            and retry_is_safe(cause, idempotent=False)
        ):
            # PostgreSQL ended that session: nothing was applied. The others still hold
            # their own connections: back to the head of the queue, in arrival order.
            self._stats["requeued"] += len(others)
            for w in reversed(others):
                w.state = "queued"
                self._queue.appendleft(w)
            others = []
        for w in others:
            w.future.set_exception(service_unavailable("Admission is unavailable: try again"))
        if not carrier.gone and not carrier.future.done():
            if isinstance(exc, asyncio.CancelledError):
                carrier.future.set_exception(service_unavailable("Admission was interrupted"))
            else:
                carrier.future.set_exception(exc)


def _carrier(waiters: Iterable[_Waiter]) -> _Waiter | None:
    """The most recent arrival with a connection, an open one if any."""
    last_closed = None
    for w in reversed(list(waiters)):
        if w.conn is not None:
            if not w.conn.closed:
                return w
            last_closed = last_closed or w
    return last_closed


def _telling(tell: Callable[[Any], None], timer: asyncio.TimerHandle) -> Callable[[Any], None]:
    """A passenger's answer, passed on: its row, or the exception that ended its wait."""

    def done(future: asyncio.Future[Row]) -> None:
        timer.cancel()
        if future.cancelled():
            tell(service_unavailable("Admission was interrupted"))
        elif (error := future.exception()) is not None:
            tell(error)
        else:
            tell(future.result())

    return done
