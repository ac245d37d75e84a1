"""Evaluating subscribers' filters on changes away from the event loop.

A filter's cost on one row is bounded (``filters.py``: linear ``like``, hashed
containment, a step budget per filter and row), but a page of 500 changes times the
filtered subscribers of a table is still up to seconds of Python. Done inline, that
freezes every request of every tenant on the instance (issue 20: a `like` filter replayed
over long rows took another tenant's select from 27 ms to 3 s). So the hub and a
catch-up hand the (subscriber, change) pairs that have filters to a worker thread and
wait for the verdicts: the loop keeps running (the thread releases the GIL every
``sys.getswitchinterval()``, 5 ms), and only the classification moves: offering the
results to queues and moving cursors stays on the loop, synchronous as before.

Unfiltered subscribers are classified inline: their test is a dictionary lookup, and a
thread hop per page would only add latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from gateway.errors import GatewayError
from gateway.realtime.events import Change
from gateway.realtime.filters import FilterTooExpensive

logger = logging.getLogger("gateway.realtime")

Verdict = Change | None | GatewayError
T = TypeVar("T")

# ONE worker for the whole instance: every thread running Python competes with the loop
# for the GIL, so several would slow the loop down more (measured with three replaying
# streams: the victim's p95 230-645 ms with the default executor's threads, see
# docs/realtime.md), while one keeps the loop's share at half or more.
_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realtime-off-loop")


async def off_loop(fn: Callable[[], T]) -> T:
    """``fn()`` in the instance's single realtime worker thread."""
    return await asyncio.get_running_loop().run_in_executor(_WORKER, fn)


# The most worker time one project's filters may take in one batch of verdicts (a poll
# page or a catch-up page). The hub dispatches a page once all its verdicts are known and
# there is one worker, so without a share per project one tenant's many filtered streams
# (each filter within its own budget) would delay every other tenant's delivery on the
# instance by as long as they take. Past the share, that project's remaining streams in
# the batch end with FILTER_TOO_EXPENSIVE; their clients resume from their last id.
PROJECT_SHARE_S = 0.5
SHARE_EXCEEDED = (
    "this project's realtime filters need too much work on this table's changes: "
    "reconnect with the last id, and use fewer or simpler filters"
)


class Classifier(Protocol):
    project_id: str
    filter_columns: tuple[str, ...]

    def classify(self, change: Change) -> Change | None: ...


def verdict(sub: Classifier, change: Change) -> Verdict:
    """What ``sub`` receives for ``change``; a ``GatewayError`` (``FILTER_TOO_EXPENSIVE``)
    when its filter ran out of budget: the caller ends that stream."""
    try:
        return sub.classify(change)
    except GatewayError as exc:
        return exc
    except Exception:  # a filter must never stop the poller for everyone
        logger.exception("realtime: filter evaluation failed")
        return None


def _verdicts(
    pairs: Sequence[tuple[Classifier, Change]], stopped: Callable[[], bool]
) -> list[Verdict]:
    spent: dict[str, float] = {}
    out: list[Verdict] = []
    for sub, change in pairs:
        if stopped():
            out.append(None)  # the hub is shutting down: don't hold the exit for this
            continue
        used = spent.get(sub.project_id, 0.0)
        if used > PROJECT_SHARE_S:
            out.append(FilterTooExpensive(SHARE_EXCEEDED))
            continue
        started = time.perf_counter()
        out.append(verdict(sub, change))
        spent[sub.project_id] = used + time.perf_counter() - started
    return out


async def verdicts_off_loop(
    pairs: Sequence[tuple[Classifier, Change]], stopped: Callable[[], bool] = lambda: False
) -> list[Verdict]:
    """``verdict`` for every pair, computed in the worker thread; ``stopped()`` true (the
    hub is stopping) skips the rest."""
    if not pairs:
        return []
    return await off_loop(lambda: _verdicts(pairs, stopped))
