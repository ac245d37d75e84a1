"""Waiting for a condition with a deadline, instead of sleeping "long enough".

A fixed sleep is either too short on a loaded machine (the test fails for no reason) or
too long everywhere else (the suite pays for it on every run). Polling asks for the
condition itself, returns as soon as it holds, and fails with a message that says what
never happened. The interval only bounds how late the test notices; the timeout is the
bound the test is allowed to wait, not an estimate of how long it takes.

Sleeps that ARE the behaviour under test (letting a window or a TTL pass, pacing a
client, giving something the chance to happen that must not) stay plain sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

Message = str | Callable[[], str]


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.05,
    message: Message = "",
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    The predicate is asked once more at the deadline (a slow machine may have got there
    while the test slept); then an ``AssertionError`` names ``message`` (a callable is
    evaluated only then, so it can show the state the test ended in).
    """
    value = _poll(predicate, timeout, interval)
    if not value:
        raise _timed_out(timeout, message)
    return value


def eventually(predicate: Callable[[], object], *, timeout: float, interval: float = 0.05) -> bool:
    """Whether ``predicate`` became true within ``timeout``: for ``assert eventually(...),
    details``, where the assertion's own message shows what went wrong."""
    return bool(_poll(predicate, timeout, interval))


async def wait_until_async(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.02,
    message: Message = "",
) -> T:
    """``wait_until`` on an event loop: the loop keeps running the code being waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval)
    if not value:
        raise _timed_out(timeout, message)
    return value


def _poll(predicate: Callable[[], T], timeout: float, interval: float) -> T:
    """The predicate's first truthy value, or its falsy one at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _timed_out(timeout: float, message: Message) -> AssertionError:
    what = message() if callable(message) else message
    return AssertionError(f"not reached within {timeout:g} s: {what or 'the condition'}")
