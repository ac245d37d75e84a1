"""``gateway_event_loop_lag_seconds``: a held loop shows up as a late timer."""

from __future__ import annotations

import asyncio
import time

from gateway.ops.looplag import LoopLagMonitor


def test_a_held_loop_is_recorded_as_lag() -> None:
    samples: list[float] = []

    async def main() -> None:
        monitor = LoopLagMonitor(samples.append, interval_s=0.02)
        monitor.start()
        while len(samples) < 3:  # a few free-running samples first
            await asyncio.sleep(0.01)
        time.sleep(0.3)  # the behaviour under test: something holds the loop for 0.3 s
        held_at = len(samples)
        while len(samples) <= held_at:
            await asyncio.sleep(0.01)
        await monitor.stop()
        assert monitor.max_lag_s >= 0.25
        assert max(samples) >= 0.25

    asyncio.run(main())
