"""Evaluating subscribers' filters on changes in a worker PROCESS, off the instance's
interpreter.

A filter's cost on one row is bounded (``filters.py``: linear ``like``, hashed
containment, a step budget per filter and row), but a page of changes times the filtered
subscribers of a table is still up to seconds of Python. Done inline, that froze every
request of every tenant on the instance (issue 20: a `like` filter replayed over long rows
took another tenant's select from 27 ms to 3 s). A worker THREAD fixed the freeze but not
the share: it competes with the event loop for the GIL, and another tenant's select p95
still rose 1.3-4.4x under the ``jsonb_contains`` attack. So the verdicts are computed in
one worker process per instance (``filter_worker.py``): its own interpreter, at a lower
CPU priority (``WORKER_NICE``), fed the changes' JSON text as read (it parses them
itself), answering one small verdict per pair. The loop only pickles strings and waits.

Bounds kept from the thread design: one worker (a second process would take the
machine's other core from request handling); each project's filters get at most
``PROJECT_SHARE_S`` of worker time per batch; a batch's verdicts are awaited at most
``VERDICT_TIMEOUT_S``. A worker that dies or overruns is killed and replaced; the pairs
of the batch it held are answered with ``SERVICE_UNAVAILABLE`` (the stream ends with an
error event and its client resumes from its last id), never left waiting.

Unfiltered subscribers are classified inline: their test is a dictionary lookup, and a
process hop per page would only add latency. The instance parses a row only to send it
(``Change.row`` is parsed on first use): a row that only filters read, or that no one
receives, never costs the instance's interpreter a parse.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from gateway.errors import GatewayError
from gateway.realtime import filter_worker
from gateway.realtime.events import Change
from gateway.realtime.filter_worker import (
    CHANGE,
    LEAVE,
    NOTHING,
    Batch,
    ChangeText,
    FilterSpec,
    WireVerdict,
    wire_change,
)

logger = logging.getLogger("gateway.realtime")

Verdict = Change | None | GatewayError

WORKER_NICE = 10  # below request handling; 19 would starve it on a saturated machine
VERDICT_TIMEOUT_S = 10.0  # far above one batch's work (PROJECT_SHARE_S per project)
WORKER_FAILED = "realtime filter evaluation failed: reconnect with the last id"


class Classifier(Protocol):
    project_id: str
    filter_columns: tuple[str, ...]
    spec: FilterSpec | None

    def classify(self, change: Change) -> Change | None: ...


def verdict(sub: Classifier, change: Change) -> Verdict:
    """What ``sub`` receives for ``change``, computed here; a ``GatewayError``
    (``FILTER_TOO_EXPENSIVE``) when its filter ran out of budget: the caller ends that
    stream."""
    try:
        return sub.classify(change)
    except GatewayError as exc:
        return exc
    except Exception:  # a filter must never stop the poller for everyone
        logger.exception("realtime: filter evaluation failed")
        return None


class FilterWorker:
    """The instance's filter worker process: started by the lifespan (``lifecycle.py``),
    stopped with the hub, replaced when it dies."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self.restarts = 0

    def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ProcessPoolExecutor(
            max_workers=1,
            # spawn: a fresh interpreter (forking a process running an event loop and a
            # connection pool would copy their state and locks)
            mp_context=multiprocessing.get_context("spawn"),
            initializer=filter_worker.init_worker,
            initargs=(WORKER_NICE,),
        )
        # start it now, not on the first stream's first page
        self._executor.submit(filter_worker.evaluate, Batch({}, [], []))

    def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            _kill(executor)
            executor.shutdown(wait=False, cancel_futures=True)

    def _restart(self) -> None:
        self.restarts += 1
        self.stop()
        self.start()

    async def verdicts(self, pairs: Sequence[tuple[Classifier, Change]]) -> list[Verdict]:
        if not pairs:
            return []
        self.start()
        batch = _batch(pairs)
        executor = self._executor
        assert executor is not None
        try:
            future = asyncio.wrap_future(executor.submit(filter_worker.evaluate, batch))
            async with asyncio.timeout(VERDICT_TIMEOUT_S):
                wire = await future
        except (BrokenProcessPool, TimeoutError) as exc:
            logger.warning("realtime: filter worker %s; restarting it", type(exc).__name__)
            if self._executor is executor:
                self._restart()
            failed = GatewayError("SERVICE_UNAVAILABLE", WORKER_FAILED)
            return [failed] * len(pairs)
        return [_unwire(v, change) for v, (_, change) in zip(wire, pairs, strict=True)]


def _kill(executor: ProcessPoolExecutor) -> None:
    """Kill the worker now: a batch it is running is abandoned, not waited for (the pool's
    own shutdown would wait for it). ``_processes`` is the executor's only handle on them."""
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        if process.is_alive():
            process.kill()


def _batch(pairs: Sequence[tuple[Classifier, Change]]) -> Batch:
    """The pairs as data: one spec per subscription, one text per change."""
    specs: dict[int, FilterSpec] = {}
    changes: list[ChangeText] = []
    index: dict[int, int] = {}  # id(change) -> its position in ``changes``
    wire_pairs: list[tuple[int, int]] = []
    for sub, change in pairs:
        assert sub.spec is not None, "a filtered subscription carries its spec"
        token = sub.spec.token
        specs.setdefault(token, sub.spec)
        at = index.get(id(change))
        if at is None:
            at = index[id(change)] = len(changes)
            changes.append(wire_change(change))
        wire_pairs.append((token, at))
    return Batch(specs, changes, wire_pairs)


def _unwire(v: WireVerdict, change: Change) -> Verdict:
    if v == NOTHING:
        return None
    if v == CHANGE:
        return change
    if v == LEAVE:
        return change.as_leave()
    assert isinstance(v, tuple)
    return GatewayError(v[0], v[1])


WORKER = FilterWorker()


async def verdicts_off_loop(pairs: Sequence[tuple[Classifier, Change]]) -> list[Verdict]:
    """``verdict`` for every pair, computed in the instance's filter worker process."""
    return await WORKER.verdicts(pairs)
