"""The overload gate on its own (pure asyncio): a bound on holders, waiters in order,
a full queue refused at once, a waiter refused at its deadline, adaptive LIFO."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission.gate import Gate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_capacity_then_waiters_in_arrival_order() -> None:
    async def main() -> None:
        gate = Gate(2, 10)
        assert gate.try_enter() and gate.try_enter()
        assert not gate.try_enter()
        order: list[int] = []

        async def waiter(i: int) -> None:
            assert await gate.wait(5.0)
            order.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert gate.waiting == 3
        assert not gate.try_enter()  # waiters go first, even when a place frees up
        for _ in range(3):
            gate.leave()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]
        assert (gate.inflight, gate.waiting) == (2, 0)
        gate.leave()
        gate.leave()
        assert gate.inflight == 0 and gate.try_enter()

    asyncio.run(main())


def test_full_queue_is_refused_at_once_and_a_late_waiter_at_its_deadline() -> None:
    async def main() -> None:
        gate = Gate(1, 1)
        assert gate.try_enter()
        assert gate.refusal() is None
        late = asyncio.create_task(gate.wait(0.05))
        await asyncio.sleep(0)
        assert gate.refusal() == "queue_full"
        assert await late is False  # nobody left within its budget
        assert gate.waiting == 0 and gate.refusal() is None
        gate.leave()  # the expired waiter is skipped: the place is free again
        assert gate.inflight == 0
        stats = gate.stats()
        assert (stats["shed_queue_full"], stats["shed_deadline"]) == (1, 1)

    asyncio.run(main())


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def main() -> None:
        gate = Gate(1, 5)
        assert gate.try_enter()
        task = asyncio.create_task(gate.wait(5.0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gate.waiting == 0
        gate.leave()
        assert gate.inflight == 0

    asyncio.run(main())


def test_newest_first_once_the_oldest_waited_too_long() -> None:
    async def main() -> None:
        clock = Clock()
        gate = Gate(1, 10, lifo_after_s=1.0, clock=clock)
        assert gate.try_enter()
        order: list[int] = []

        async def waiter(i: int) -> None:
            if await gate.wait(60.0):
                order.append(i)

        tasks = []
        for i in range(3):
            tasks.append(asyncio.create_task(waiter(i)))
            await asyncio.sleep(0)
            clock.now += 0.1
        gate.leave()  # the oldest waited 0.3 s: first come, first served
        await asyncio.sleep(0)
        clock.now += 2.0  # now the oldest has waited 2.3 s: congested
        gate.leave()
        await asyncio.sleep(0)
        gate.leave()
        await asyncio.sleep(0)
        assert order == [0, 2, 1]
        assert gate.stats()["served_newest_first"] == 2
        await asyncio.gather(*tasks)

    asyncio.run(main())
