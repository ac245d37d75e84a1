"""The polling helper every tier waits with: it returns as soon as the condition holds,
and fails at its deadline with a message that says what never happened."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from tests.support.polling import eventually, wait_until, wait_until_async


def test_returns_the_first_truthy_value_without_waiting_longer() -> None:
    calls = itertools.count(1)
    started = time.monotonic()
    assert wait_until(lambda: next(calls) >= 3 and "ready", timeout=5, interval=0.01) == "ready"
    assert time.monotonic() - started < 1.0


def test_fails_at_the_deadline_naming_what_never_happened() -> None:
    state = {"rows": 2}
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"within 0.2 s: 3 rows \(got 2\)"):
        wait_until(
            lambda: state["rows"] >= 3,
            timeout=0.2,
            interval=0.05,
            message=lambda: f"3 rows (got {state['rows']})",
        )
    assert 0.2 <= time.monotonic() - started < 2.0


def test_eventually_answers_instead_of_raising() -> None:
    assert eventually(lambda: True, timeout=0)
    assert not eventually(lambda: False, timeout=0.1, interval=0.02)


def test_the_async_twin_lets_the_loop_run_what_it_waits_for() -> None:
    async def scenario() -> int:
        box: list[int] = []
        asyncio.get_running_loop().call_later(0.05, box.append, 7)
        return await wait_until_async(lambda: box and box[0], timeout=5, message="the value")

    assert asyncio.run(scenario()) == 7
    with pytest.raises(AssertionError, match="the value"):
        asyncio.run(wait_until_async(lambda: None, timeout=0.05, message="the value"))
