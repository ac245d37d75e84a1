"""The gate in front of the database routes: a bound on requests in flight per instance,
and a deadline-aware wait queue in front of it.

Why: under 10× overload the old gateway spent its CPU on refusals. Every request was
parsed, routed and read before it found the pool's queue full; the 503 came back at
once, and a client that retries at once (most do) was back a millisecond later. The
requests that did hold a connection waited for an event loop busy with refusals, and
2xx answers fell to ~0.13× of what the same instances serve at the knee.

The gate fixes the order of things. A request for a database route passes the gate
before anything is parsed; at most ``capacity`` requests (by default 2 × the pool's
``pool_max``: one holding each connection, one getting ready) are past it. Others wait
— a parked future, no CPU — in arrival order, and each is let in when a request ahead
of it finishes. A waiter is refused (503, ``Retry-After: 1``) only when it can't get a
connection in time:

- at once, when the queue holds ``queue_max`` waiters, or when the instance's recent
  pace (completions per second) says the requests ahead of it would take longer than
  its budget (``GATEWAY_POOL_TIMEOUT_S`` from its arrival);
- at its deadline, when it is still waiting then (the pace changed, the database
  stalled).

So a storm of 200 connections becomes a queue that drains at the pool's pace: each
client waits its turn (~connections ÷ pace), 2xx answers keep coming at capacity, and
the few refusals cost almost nothing. Pure asyncio: no database, no HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

PACE_BUCKET_S = 0.5  # the pace is re-measured over at least this long


class Gate:
    """At most ``capacity`` holders; FIFO waiters with deadlines; a measured pace."""

    def __init__(
        self,
        capacity: int,
        queue_max: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.queue_max = max(0, queue_max)
        self.clock = clock
        self.inflight = 0
        self.waiting = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        # pace: completions per second, measured in buckets of >= PACE_BUCKET_S
        self._pace = 0.0
        self._bucket_start = clock()
        self._bucket_count = 0
        self.counts = {
            "entered": 0,
            "entered_after_wait": 0,
            "shed_queue_full": 0,
            "shed_too_late": 0,
            "shed_deadline": 0,
        }

    # --- figures --------------------------------------------------------------------------

    def pace(self) -> float:
        """Completions per second lately (0 when unknown). Falls when nothing completes."""
        elapsed = self.clock() - self._bucket_start
        if elapsed > 2 * PACE_BUCKET_S:
            return min(self._pace, self._bucket_count / elapsed)
        return self._pace

    def stats(self) -> dict[str, float]:
        return {
            **self.counts,
            "inflight": self.inflight,
            "waiting": self.waiting,
            "capacity": self.capacity,
            "queue_max": self.queue_max,
            "pace_per_s": round(self.pace(), 1),
        }

    # --- entering and leaving -------------------------------------------------------------

    def try_enter(self) -> bool:
        """Past the gate at once if there is room and nobody waits (FIFO)."""
        if self.inflight < self.capacity and not self.waiting:
            self.inflight += 1
            self.counts["entered"] += 1
            return True
        return False

    def refusal(self, budget_s: float) -> str | None:
        """Why a request that would wait now can't be let in within ``budget_s``: the
        queue is full, or the measured pace says its turn comes too late. ``None``: wait."""
        if self.waiting >= self.queue_max:
            self.counts["shed_queue_full"] += 1
            return "queue_full"
        pace = self.pace()
        if pace > 0 and (self.waiting + 1) / pace > budget_s:
            self.counts["shed_too_late"] += 1
            return "too_late"
        return None

    async def wait(self, budget_s: float) -> bool:
        """Wait for a turn; True once past the gate (``leave`` when done), False when the
        budget ran out first."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        self.waiting += 1
        timer = loop.call_later(max(0.0, budget_s), self._expire, fut)
        try:
            admitted = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.leave()  # the turn was handed over just as we were cancelled
            elif not fut.done():
                fut.cancel()
                self.waiting -= 1
            raise
        finally:
            timer.cancel()
        if admitted:
            self.counts["entered"] += 1
            self.counts["entered_after_wait"] += 1
        else:
            self.counts["shed_deadline"] += 1
        return admitted

    def _expire(self, fut: asyncio.Future[bool]) -> None:
        if not fut.done():
            self.waiting -= 1
            fut.set_result(False)  # it stays in the deque; leave() skips it

    def leave(self) -> None:
        """A holder is done: hand its place to the first live waiter, else free it."""
        self._completed()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self.waiting -= 1
                fut.set_result(True)  # inflight unchanged: the place changes hands
                return
        self.inflight -= 1

    def _completed(self) -> None:
        self._bucket_count += 1
        now = self.clock()
        elapsed = now - self._bucket_start
        if elapsed >= PACE_BUCKET_S:
            measured = self._bucket_count / elapsed
            self._pace = measured if self._pace == 0 else 0.5 * self._pace + 0.5 * measured
            self._bucket_start = now
            self._bucket_count = 0
