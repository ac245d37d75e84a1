"""The worker's share of delivery slots (issue 20): the reserve for projects with
nothing running, computed without a database (``gateway.jobs.worker.claim_plan``)."""

from __future__ import annotations

from gateway.jobs.worker import claim_plan, reserve_slots


def test_reserve_is_a_fifth_of_the_slots_and_at_least_one() -> None:
    assert [reserve_slots(n) for n in (0, 1, 4, 5, 10, 16, 100)] == [0, 1, 1, 1, 2, 3, 20]


def test_above_the_reserve_any_project_may_claim_under_its_cap() -> None:
    assert claim_plan(10, 5, {}) == (8, 5, {})
    assert claim_plan(10, 5, {"a": 5, "b": 0}) == (3, 5, {"a": 5})


def test_within_the_reserve_only_projects_running_nothing_get_one_slot_each() -> None:
    # two hanging tenants hold 8 of 10: the last 2 go one per project, to the others
    limit, cap, running = claim_plan(10, 5, {"a": 5, "b": 3})
    assert (limit, cap) == (2, 1)
    # the claim's want is cap - running: 0 for a and b, 1 for anyone else
    assert all(cap - n <= 0 for n in running.values())
    assert claim_plan(10, 5, {"a": 5, "b": 3, "c": 1, "d": 1}) == (
        0,
        1,
        {"a": 5, "b": 3, "c": 1, "d": 1},
    )


def test_one_slot_is_all_reserve() -> None:
    assert claim_plan(1, 1, {}) == (1, 1, {})
    assert claim_plan(1, 1, {"a": 1}) == (0, 1, {"a": 1})
