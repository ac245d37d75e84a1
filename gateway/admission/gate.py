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
— a parked future, no CPU — and each is let in when a request ahead of it finishes:
oldest first while the queue moves, newest first once the oldest has waited longer
than ``lifo_after_s`` (half the pool timeout; adaptive LIFO). A waiter is answered 503
(``Retry-After: 1``) only

- at once, when ``queue_max`` requests already wait (a memory bound, far above what the
  pool's pace drains within the timeout), or
- at its deadline: still waiting ``GATEWAY_POOL_TIMEOUT_S`` after its arrival.

It is not refused early on a forecast of its wait: most clients retry at once, so an
early 503 only brings the same request back a millisecond later — the storm the gate is
there to stop. A storm of 200 connections thus becomes a queue that drains at the
pool's pace: 2xx answers keep coming at capacity, and the refusals are few and cheap.
Pure asyncio: no database, no HTTP.
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
        lifo_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.queue_max = max(0, queue_max)
        self.lifo_after_s = lifo_after_s
        self.clock = clock
        self.inflight = 0
        self.waiting = 0
        self._waiters: deque[tuple[asyncio.Future[bool], float]] = deque()
        # pace: completions per second, measured in buckets of >= PACE_BUCKET_S
        self._pace = 0.0
        self._bucket_start = clock()
        self._bucket_count = 0
        self.counts = {
            "entered": 0,
            "entered_after_wait": 0,
            "shed_queue_full": 0,
            "shed_deadline": 0,
            "served_newest_first": 0,
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

    def refusal(self) -> str | None:
        """``"queue_full"`` when no more requests may wait; ``None``: wait for a turn.

        No refusal on the measured pace: a client refused at once is back a moment later
        (most retry at once), so an early 503 buys nothing but another request to refuse;
        a parked waiter costs nothing until its turn or its deadline."""
        if self.waiting >= self.queue_max:
            self.counts["shed_queue_full"] += 1
            return "queue_full"
        return None

    async def wait(self, budget_s: float) -> bool:
        """Wait for a turn; True once past the gate (``leave`` when done), False when the
        budget ran out first."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append((fut, self.clock()))
        self.waiting += 1
        timer = loop.call_later(max(0.0, budget_s), self._expire, fut)
        try:
            admitted = await fut
        except asyncio.CancelledError:
            # cancelling the task cancels ``fut`` too: then it was still waiting
            if fut.cancelled() or not fut.done():
                fut.cancel()
                self.waiting -= 1
            elif fut.result():
                self.leave()  # the turn was handed over just as we were cancelled
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
        """A holder is done: hand its place to a waiter, else free it.

        Oldest first, unless the oldest live waiter has waited longer than
        ``lifo_after_s``: then the queue is congested and the NEWEST waiter goes first
        (adaptive LIFO). Under a backlog that can't be served in time, the requests that
        get through then get through fast (far inside the deadline, so their answer
        comes well within the pool timeout), and the oldest ones, which would have been
        served late or not at all, get their 503 at their deadline."""
        self._completed()
        waiters = self._waiters
        while waiters and waiters[0][0].done():
            waiters.popleft()
        if waiters:
            fut, since = waiters[0]
            if self.clock() - since > self.lifo_after_s:
                while waiters[-1][0].done():
                    waiters.pop()
                fut, _ = waiters.pop()
                self.counts["served_newest_first"] += 1
            else:
                waiters.popleft()
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
