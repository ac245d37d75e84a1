"""The worker's share per project: past it, that project's remaining verdicts in the
batch are FILTER_TOO_EXPENSIVE; other projects' are computed as usual."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from gateway.errors import GatewayError
from gateway.realtime import evaluation
from gateway.realtime.events import Change, Cursor


@dataclass(eq=False)
class FakeSub:
    project_id: str
    filter_columns: tuple[str, ...] = ("title",)

    def classify(self, change: Change) -> Change | None:
        sum(range(1000))  # some work, so the time spent is measurable
        return change


def change(n: int) -> Change:
    return Change(Cursor(1, n), "p", "todos", "insert", {"id": n}, {"id": n})


def test_a_project_past_its_share_gets_filter_too_expensive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(evaluation, "PROJECT_SHARE_S", 0.0)
    greedy, other = FakeSub("greedy"), FakeSub("other")
    pairs = [(greedy, change(1)), (other, change(2)), (greedy, change(3)), (other, change(4))]
    got = asyncio.run(evaluation.verdicts_off_loop(pairs))
    assert isinstance(got[0], Change)  # the first one is always evaluated
    assert isinstance(got[2], GatewayError) and got[2].code == "FILTER_TOO_EXPENSIVE"
    # the other project's first verdict is computed although greedy is past its share
    # (the share is per project); its second is past its own (zero) share
    assert isinstance(got[1], Change) and not isinstance(got[3], Change)


def test_a_stopping_hub_skips_the_rest() -> None:
    pairs = [(FakeSub("p"), change(i)) for i in range(5)]
    assert asyncio.run(evaluation.verdicts_off_loop(pairs, lambda: True)) == [None] * 5
