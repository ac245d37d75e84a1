"""The event loop's lag: how late a periodic timer on the loop fires.

Every request, stream and background job of an instance shares one event loop; anything
that holds it (a long computation, a blocking call) delays all of them at once, for
every tenant. Request durations show that only indirectly and per route; this measures
the loop itself: a task asks to wake every ``INTERVAL_S`` and records how much later
than asked it actually ran, as ``gateway_event_loop_lag_seconds`` (a histogram: the
rate of its ``_count`` is the sampling rate; the high buckets show stalls).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

INTERVAL_S = 0.1


class LoopLagMonitor:
    """Samples the loop's lag into ``observe`` (a histogram's ``observe``)."""

    def __init__(self, observe: Callable[[float], None], interval_s: float = INTERVAL_S) -> None:
        self.observe = observe
        self.interval_s = interval_s
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, time.monotonic() - asked - self.interval_s)
            self.last_lag_s = lag
            self.max_lag_s = max(self.max_lag_s, lag)
            self.observe(lag)
