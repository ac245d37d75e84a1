"""The route cache's rules on their own (pure asyncio, no database): the directory's
answer is stood in by a scripted lookup, because what is tested here is what the cache
keeps, drops and shares — the real lookup is covered in tests/db/test_cell_routing.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.cells import router as router_module
from gateway.cells.router import HOME, CellRouter

P1 = "11111111-1111-1111-1111-111111111111"
P2 = "22222222-2222-2222-2222-222222222222"


class ScriptedRouter(CellRouter):
    """A router whose directory is a dict (hash -> (cell, project)); a lookup may be held
    open with ``gate`` to make misses overlap an invalidation or each other."""

    def __init__(self, directory: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(None, **kwargs)
        self.directory = directory
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None

    async def _lookup(self, key_hash: str) -> tuple[str, str | None]:
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        cell, project = self.directory.get(key_hash, (HOME, None))  # type: ignore[arg-type]
        return cell, project


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_warm_key_is_answered_from_the_cache_without_a_lookup() -> None:
    router = ScriptedRouter({"h1": ("c1", P1)})

    async def scenario() -> list[str]:
        return [await router.cell_of("h1") for _ in range(5)]

    assert run(scenario()) == ["c1"] * 5
    assert router.lookups == 1
    assert router.hits == 4


def test_an_unknown_hash_routes_home_and_the_negative_answer_is_cached() -> None:
    router = ScriptedRouter({})

    async def scenario() -> tuple[str, str]:
        return await router.cell_of("nope"), await router.cell_of("nope")

    assert run(scenario()) == (HOME, HOME)
    assert router.lookups == 1


def test_key_notification_drops_that_hash_so_a_new_key_routes_at_once() -> None:
    router = ScriptedRouter({})

    async def scenario() -> tuple[str, str, str]:
        before = await router.cell_of("h1")  # cached as home (negative)
        router.directory["h1"] = ("c1", P1)  # the key is created off home
        stale = await router.cell_of("h1")
        router.on_notify("key:h1")
        return before, stale, await router.cell_of("h1")

    assert run(scenario()) == (HOME, HOME, "c1")
    assert router.lookups == 2


def test_project_notification_drops_every_hash_of_that_project_only() -> None:
    router = ScriptedRouter({"a": ("c1", P1), "b": ("c1", P1), "c": ("c2", P2)})

    async def scenario() -> list[str]:
        for h in ("a", "b", "c"):
            await router.cell_of(h)
        router.directory.update({"a": ("c2", P1), "b": ("c2", P1)})  # P1 moved to c2
        router.on_notify(f"project:{P1}")
        return [await router.cell_of(h) for h in ("a", "b", "c")]

    assert run(scenario()) == ["c2", "c2", "c2"]
    assert router.lookups == 5  # a and b looked up again, c still cached
    assert router.stats()["entries"] == 3


def test_cells_notification_keeps_routes_and_an_unknown_payload_drops_all() -> None:
    router = ScriptedRouter({"a": ("c1", P1)})

    async def scenario() -> None:
        await router.cell_of("a")
        router.on_notify("cells")
        assert router.stats()["entries"] == 1
        router.on_notify("something-new")
        assert router.stats()["entries"] == 0

    run(scenario())


def test_forget_all_after_a_listener_reconnect() -> None:
    router = ScriptedRouter({"a": ("c1", P1), "b": ("c2", P2)})

    async def scenario() -> None:
        await router.cell_of("a")
        await router.cell_of("b")
        router.forget_all()
        assert router.stats()["entries"] == 0
        router.on_notify(f"project:{P1}")  # the reverse index was cleared with the routes

    run(scenario())


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    router = ScriptedRouter({f"h{i}": ("c1", P1) for i in range(10)}, capacity=3)

    async def scenario() -> None:
        for h in ("h0", "h1", "h2"):
            await router.cell_of(h)
        await router.cell_of("h0")  # h0 becomes the most recent
        await router.cell_of("h3")  # evicts h1, the least recent
        assert list(router._routes) == ["h2", "h0", "h3"]
        # the reverse index follows evictions (no unbounded growth per project)
        assert router._by_project[P1] == {"h2", "h0", "h3"}

    run(scenario())


def test_concurrent_misses_for_one_hash_make_one_lookup() -> None:
    router = ScriptedRouter({"h": ("c1", P1)})

    async def scenario() -> list[str]:
        router.gate = asyncio.Event()
        tasks = [asyncio.create_task(router.cell_of("h")) for _ in range(20)]
        await asyncio.sleep(0)
        router.gate.set()
        return list(await asyncio.gather(*tasks))

    assert run(scenario()) == ["c1"] * 20
    assert router.lookups == 1


def test_a_failed_lookup_fails_its_waiters_and_is_not_cached() -> None:
    router = ScriptedRouter({"h": ("c1", P1)})

    async def scenario() -> list[Any]:
        router.gate = asyncio.Event()
        router.fail = OSError("control down")
        tasks = [asyncio.create_task(router.cell_of("h")) for _ in range(3)]
        await asyncio.sleep(0)
        router.gate.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        router.fail = None
        router.gate = None
        return [*outcomes, await router.cell_of("h")]

    outcomes = run(scenario())
    assert all(isinstance(o, OSError) for o in outcomes[:3])
    assert outcomes[3] == "c1"
    assert router.lookups == 2


def test_an_answer_racing_an_invalidation_serves_its_request_but_is_not_kept() -> None:
    router = ScriptedRouter({"h": ("c1", P1)})

    async def scenario() -> tuple[str, int]:
        router.gate = asyncio.Event()
        task = asyncio.create_task(router.cell_of("h"))
        await asyncio.sleep(0)
        router.on_notify(f"project:{P1}")  # e.g. a move flipped the project meanwhile
        router.gate.set()
        answer = await task
        return answer, router.stats()["entries"]

    assert run(scenario()) == ("c1", 0)


def test_while_the_listener_is_down_entries_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    live = [True]
    now = [1000.0]
    monkeypatch.setattr(router_module.time, "monotonic", lambda: now[0])
    router = ScriptedRouter({"h": ("c1", P1)}, live=lambda: live[0])

    async def scenario() -> None:
        await router.cell_of("h")
        now[0] += router_module.STALE_AFTER_S * 10
        await router.cell_of("h")  # live: the entry stays valid however old
        assert router.lookups == 1
        live[0] = False
        await router.cell_of("h")  # not live and older than STALE_AFTER_S: asked again
        assert router.lookups == 2
        now[0] += router_module.STALE_AFTER_S / 2
        await router.cell_of("h")  # fresh enough
        assert router.lookups == 2

    run(scenario())
