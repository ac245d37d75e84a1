"""The per-project share of the pool (gateway/db/share.py): slots, hand-over, deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.db.share import ProjectShare, default_share
from gateway.errors import GatewayError


def test_default_share_is_a_quarter_of_the_pool_at_most_4() -> None:
    assert [default_share(n) for n in (1, 4, 8, 16, 100)] == [1, 1, 2, 4, 4]


def test_a_project_at_its_share_waits_while_others_enter() -> None:
    async def scenario() -> None:
        share = ProjectShare(2)
        assert share.try_enter("a") and share.try_enter("a")
        assert not share.try_enter("a")
        assert share.try_enter("b")  # another project is not held up by a's share
        waiter = asyncio.create_task(share.enter("a", time.monotonic() + 5))
        await asyncio.sleep(0)
        assert not waiter.done()
        share.leave("b")
        await asyncio.sleep(0)
        assert not waiter.done()  # b's slot is not a's
        share.leave("a")  # handed over to a's waiter: a still holds 2
        await waiter
        assert share.held("a") == 2
        share.leave("a")
        share.leave("a")
        assert share.held("a") == 0 and share.held("b") == 0

    asyncio.run(scenario())


def test_waiters_are_served_in_arrival_order_and_time_out_with_503() -> None:
    async def scenario() -> None:
        share = ProjectShare(1)
        assert share.try_enter("a")
        order: list[int] = []

        async def wait(i: int) -> None:
            await share.enter("a", time.monotonic() + 5)
            order.append(i)

        tasks = [asyncio.create_task(wait(i)) for i in range(3)]
        await asyncio.sleep(0)
        # a newcomer does not jump the queue even when the count would allow it
        with pytest.raises(GatewayError) as caught:
            await share.enter("a", time.monotonic() + 0.01)
        assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
        for _ in range(3):
            share.leave("a")
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]
        share.leave("a")
        assert share.held("a") == 0

    asyncio.run(scenario())


def test_keys_are_remembered_with_a_bound() -> None:
    share = ProjectShare(1)
    share.remember("k1", "p1")
    assert share.project_of("k1") == "p1" and share.project_of("k2") is None
    assert share.project_of(None) is None
