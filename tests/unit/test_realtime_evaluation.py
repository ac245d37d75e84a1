"""The filter worker process (``evaluation.py``, ``filter_worker.py``): the same verdicts
as the subscription computes on the loop, a share of worker time per project, and a
worker that dies is replaced with its batch answered, not left waiting."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.realtime import evaluation, filter_worker
from gateway.realtime.events import Change, Cursor, change_from_row
from gateway.realtime.filter_worker import FilterSpec, spec_of
from gateway.realtime.filters import Filter, Predicate, classify_change, compile_filters
from tests.support.polling import wait_until


@dataclass(eq=False)
class Sub:
    """What the hub hands the worker: a subscription's project, filter and spec."""

    project_id: str
    filters: list[Filter]
    owner: str | None = None
    predicate: Predicate = field(init=False)
    filter_columns: tuple[str, ...] = field(init=False)
    spec: FilterSpec = field(init=False)

    def __post_init__(self) -> None:
        self.predicate, self.filter_columns = compile_filters(self.filters)
        self.spec = spec_of(self.project_id, self.filters, None, self.owner)

    def classify(self, change: Change) -> Change | None:
        return classify_change(self.predicate, self.filter_columns, self.owner, change)


def change(n: int, op: str, row: Any, old: Any = None, owner: str | None = None) -> Change:
    dump = lambda v: None if v is None else orjson.dumps(v).decode()  # noqa: E731
    return change_from_row(
        "p", "todos", (1, n, op, dump({"id": n}), dump(row), dump(old)), 0, 0, owner=owner
    )


@pytest.fixture
def worker() -> Any:
    w = evaluation.FilterWorker()
    w.start()
    yield w
    w.stop()


def test_the_worker_answers_what_the_subscription_would(worker: evaluation.FilterWorker) -> None:
    done = Sub("p", [Filter("done", "eq", True)])
    mine = Sub("p", [Filter("title", "like", "%a%")], owner="u1")
    changes = [
        change(1, "insert", {"id": 1, "done": True, "title": "a"}, owner="u1"),
        change(2, "update", {"id": 2, "done": False, "title": "b"}, {"done": True}),  # leave
        change(3, "delete", None, owner="u2"),
        change(4, "insert", {"id": 4, "done": False, "title": "xa"}, owner="u2"),
        change(5, "truncate", None),
    ]
    pairs = [(s, c) for c in changes for s in (done, mine)]
    got = asyncio.run(worker.verdicts(pairs))
    expected = [s.classify(c) for s, c in pairs]
    assert [None if v is None else (v.op, v.cursor) for v in got] == [
        None if v is None else (v.op, v.cursor) for v in expected
    ]
    assert any(v is not None and v.op == "leave" for v in got)


def test_a_project_past_its_share_gets_filter_too_expensive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(filter_worker, "PROJECT_SHARE_S", 0.0)
    greedy = Sub("greedy", [Filter("id", "neq", 0)])
    other = Sub("other", [Filter("id", "neq", 0)])
    pairs = [(greedy, change(1, "insert", {"id": 1})), (other, change(2, "insert", {"id": 2}))]
    pairs += [(greedy, change(3, "insert", {"id": 3})), (other, change(4, "insert", {"id": 4}))]
    batch = evaluation._batch(pairs)
    got = filter_worker.evaluate(batch)
    assert got[0] == filter_worker.CHANGE  # the first one is always evaluated
    assert isinstance(got[2], tuple) and got[2][0] == "FILTER_TOO_EXPENSIVE"
    # the other project's first verdict is computed although greedy is past its share
    # (the share is per project); its second is past its own (zero) share
    assert got[1] == filter_worker.CHANGE and got[3] != filter_worker.CHANGE


def _worker_pids(w: evaluation.FilterWorker) -> list[int]:
    executor = w._executor
    assert executor is not None
    return [p.pid for p in executor._processes.values() if p.pid is not None]  # type: ignore[union-attr]


def test_a_killed_worker_is_replaced_and_its_batch_answered(
    worker: evaluation.FilterWorker,
) -> None:
    sub = Sub("p", [Filter("title", "like", "%a%")])
    pairs = [(sub, change(i, "insert", {"id": i, "title": "a" * 2000})) for i in range(3000)]

    async def scenario() -> tuple[list[Any], list[Any]]:
        await worker.verdicts(pairs[:1])  # the worker is up
        pids = _worker_pids(worker)
        pending = asyncio.create_task(worker.verdicts(pairs))
        await asyncio.sleep(0)  # submitted
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(evaluation.VERDICT_TIMEOUT_S + 5):
            answered = await pending
        async with asyncio.timeout(30):
            after = await worker.verdicts(pairs[:5])
        return answered, after

    answered, after = asyncio.run(scenario())
    assert len(answered) == len(pairs)
    # killed mid-batch: every pair is answered with an error that ends the stream
    # (or, had the worker finished first, with its verdict)
    assert all(
        (isinstance(v, GatewayError) and v.code == "SERVICE_UNAVAILABLE") or isinstance(v, Change)
        for v in answered
    )
    assert worker.restarts >= 1 or all(isinstance(v, Change) for v in answered)
    assert [v.cursor for v in after] == [Cursor(1, i) for i in range(5)]  # type: ignore[union-attr]


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whoever adopted it, if ever)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (FileNotFoundError, StopIteration):
        return False
    return "Z" not in state.split()[1]


def test_the_worker_ends_when_its_instance_is_killed() -> None:
    """A SIGKILLed instance can't stop its worker: the worker notices and exits."""
    script = (
        "import sys, time\n"
        "from gateway.realtime import evaluation, filter_worker\n"
        "w = evaluation.FilterWorker(); w.start()\n"
        "ex = w._executor\n"
        "ex.submit(filter_worker.evaluate, filter_worker.Batch({}, [], [])).result(60)\n"
        "print(*[p.pid for p in ex._processes.values()], flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert pids and all(_running(p) for p in pids)
        parent.kill()
        parent.wait(10)
        wait_until(
            lambda: not any(_running(p) for p in pids),
            timeout=10 * filter_worker.PARENT_CHECK_S,
            message=lambda: f"the worker outlived its instance: {pids}",
        )
    finally:
        parent.kill()
