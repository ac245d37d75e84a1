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
from collections.abc import Sequence
from typing import Protocol

from gateway.errors import GatewayError
from gateway.realtime.events import Change

logger = logging.getLogger("gateway.realtime")

Verdict = Change | None | GatewayError


class Classifier(Protocol):
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


def _verdicts(pairs: Sequence[tuple[Classifier, Change]]) -> list[Verdict]:
    return [verdict(sub, change) for sub, change in pairs]


async def verdicts_off_loop(pairs: Sequence[tuple[Classifier, Change]]) -> list[Verdict]:
    """``verdict`` for every pair, computed in a worker thread."""
    if not pairs:
        return []
    return await asyncio.to_thread(_verdicts, pairs)
