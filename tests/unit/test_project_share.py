"""The per-project share of the pool (gateway/db/share.py): slots, hand-over, deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.db.share import ProjectShare, Ride, default_share
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


def test_an_admitted_waiter_is_served_before_waiters_not_admitted_yet() -> None:
    async def scenario() -> list[str]:
        share = ProjectShare(1)
        assert share.try_enter("a")
        order: list[str] = []

        async def wait(name: str, admitted: bool) -> None:
            await share.enter("a", time.monotonic() + 5, admitted=admitted)
            order.append(name)
            share.leave("a")

        tasks = [asyncio.create_task(wait("first-come", False))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(wait("admitted", True)))
        await asyncio.sleep(0)
        share.leave("a")
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["admitted", "first-come"]


def test_one_request_of_an_unknown_key_is_admitted_at_a_time() -> None:
    async def scenario() -> tuple[bool, tuple[str | None, bool], tuple[str | None, bool]]:
        share = ProjectShare(1)
        project, learner = await share.learn("k", time.monotonic() + 5)
        assert project is None and learner
        follower = asyncio.create_task(share.learn("k", time.monotonic() + 5))
        await asyncio.sleep(0.01)
        waited = not follower.done()  # waits for the learner's admission
        share.remember("k", "p")
        share.learned("k")
        known = await follower
        # a key whose learner failed: the next request does not queue behind it again
        assert await share.learn("bad", time.monotonic() + 5) == (None, True)
        failed = asyncio.create_task(share.learn("bad", time.monotonic() + 5))
        await asyncio.sleep(0)
        share.learned("bad")
        return waited, known, await failed

    waited, known, failed = asyncio.run(scenario())
    assert waited
    assert known == ("p", False)
    assert failed == (None, False)


def test_waiting_for_an_unknown_key_ends_at_the_deadline() -> None:
    async def scenario() -> None:
        share = ProjectShare(1)
        await share.learn("k", time.monotonic() + 5)
        await share.learn("k", time.monotonic() + 0.05)

    with pytest.raises(GatewayError) as err:
        asyncio.run(scenario())
    assert err.value.status == 503


def test_a_waiter_that_times_out_or_is_cancelled_leaves_its_queue_and_passes_a_slot_on() -> None:
    async def scenario() -> None:
        share = ProjectShare(1)
        assert share.try_enter("a")
        # timed out: 503, and the slot freed later is not handed to it
        with pytest.raises(GatewayError) as caught:
            await share.enter("a", time.monotonic() + 0.01)
        assert caught.value.status == 503
        share.leave("a")
        assert share.held("a") == 0 and share.try_enter("a")
        # cancelled while waiting: the same
        waiting = asyncio.create_task(share.enter("a", time.monotonic() + 5))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        share.leave("a")
        assert share.held("a") == 0 and share.try_enter("a")
        # handed the slot just as it was cancelled: the slot goes back, not lost
        handed = asyncio.create_task(share.enter("a", time.monotonic() + 5))
        await asyncio.sleep(0)
        share.leave("a")  # the slot changes hands: still held, by the waiter
        handed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handed
        assert share.held("a") == 0

    asyncio.run(scenario())


def test_rides_are_taken_oldest_first_within_the_share_and_answered_in_their_wait() -> None:
    async def scenario() -> None:
        share = ProjectShare(1, admitted_wait_s=5)
        assert share.try_enter("a")
        rides = [Ride(("k", i)) for i in range(3)]
        waits = [
            asyncio.create_task(share.enter("a", time.monotonic() + 5, ride=ride)) for ride in rides
        ]
        await asyncio.sleep(0)
        # at most the share's size taken and waiting at once, the oldest first
        taken = share.take_rides()
        assert taken == [rides[0]] and share.take_rides() == []
        # refused by admission while waiting: the refusal ends its wait, and frees room
        share.ride_answered(rides[0], GatewayError("RATE_LIMIT_EXCEEDED", "no", status=429))
        with pytest.raises(GatewayError) as refused:
            await waits[0]
        assert refused.value.status == 429
        assert share.take_rides() == [rides[1]]
        # admitted while waiting: served before the older request not admitted yet
        share.ride_answered(rides[1], "admission")
        share.leave("a")
        await asyncio.sleep(0)
        assert waits[1].done() and not waits[2].done()
        assert rides[1].admission is not None and rides[1].admission.result() == "admission"
        # handed a slot before its statement answered: it reads the answer itself
        assert share.take_rides() == [rides[2]]
        share.leave("a")
        await waits[2]
        assert rides[2].admission is not None and not rides[2].admission.done()
        share.ride_answered(rides[2], "late")
        assert rides[2].admission.result() == "late"
        share.leave("a")
        assert share.held("a") == 0

    asyncio.run(scenario())
