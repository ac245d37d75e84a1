"""The coalescer's passengers (gateway/admission/coalescer.py): admissions of requests
that hold no connection, taken along by the statements that requests with one form.
The statement here is a stand-in that answers each element with its own arguments: what
is under test is who goes in which statement, on whose connection."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from gateway.admission.coalescer import Coalescer, Passenger


class Statements:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, list[Any]]] = []

    async def send(self, conn: Any, batch: list[Any], deadline: float) -> list[Any]:
        self.sent.append((conn, list(batch)))
        await asyncio.sleep(0)
        return [("row", args) for args in batch]


def test_passengers_ride_in_the_next_statement_or_are_carried_by_their_own_request() -> None:
    async def scenario() -> None:
        statements = Statements()
        coalescer = Coalescer(statements.send, timeout_s=5)
        told: dict[str, Any] = {}
        waiting = [Passenger(("p1",), lambda answer: told.__setitem__("p1", answer))]
        coalescer.take = lambda: [waiting.pop()] if waiting else []
        holder = SimpleNamespace(closed=False)
        # a lone request's statement takes the waiting request along, on its connection
        row = await coalescer.admit(holder, ("h1",))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert row == ("row", ("h1",))
        assert statements.sent == [(holder, [("p1",), ("h1",)])]
        assert told == {"p1": ("row", ("p1",))}
        # passengers alone wait: no statement without a connection (as after a batch
        # that was requeued, or one cut at batch_max)
        stranded = Passenger(("p2",), lambda answer: told.__setitem__("p2", answer))
        waiting.append(stranded)
        assert coalescer._board()
        coalescer._pump()
        await asyncio.sleep(0)
        assert len(statements.sent) == 1 and "p2" not in told
        assert coalescer.stats()["queued"] == 1
        # ...until their own request brings one (its slot came first)
        own = SimpleNamespace(closed=False)
        coalescer.carry(stranded, own)  # type: ignore[arg-type]
        for _ in range(3):
            await asyncio.sleep(0)
        assert statements.sent[-1] == (own, [("p2",)])
        assert told["p2"] == ("row", ("p2",))
        assert coalescer.stats()["passengers"] == 2

    asyncio.run(scenario())


def test_a_request_with_a_connection_is_never_stuck_behind_passengers() -> None:
    async def scenario() -> None:
        statements = Statements()
        coalescer = Coalescer(statements.send, timeout_s=5, batch_max=2)
        told: dict[str, Any] = {}
        waiting = [
            Passenger((f"p{i}",), lambda answer, i=i: told.__setitem__(f"p{i}", answer))
            for i in range(3)
        ]
        coalescer.take = lambda: [waiting.pop(0) for _ in range(len(waiting))]
        holder = SimpleNamespace(closed=False)
        # three passengers ahead of it and two per statement: it still carries one
        row = await asyncio.wait_for(coalescer.admit(holder, ("h",)), 2)  # type: ignore[arg-type]
        assert row == ("row", ("h",))
        assert all(len(batch) <= 2 for _, batch in statements.sent)
        assert all(conn is holder for conn, _ in statements.sent)

    asyncio.run(scenario())
