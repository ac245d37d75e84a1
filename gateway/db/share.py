"""A fair share of the instance's pool per project (``GATEWAY_POOL_MAX_PER_PROJECT``).

One project may hold at most ``limit`` of the instance's pool connections at once; its
other requests wait here, in arrival order, for one of its own slots — never in the
pool's queue — so a project at its share cannot take a freed connection from a project
below it: only requests holding a slot ask the pool for a connection, and the pool
serves those in arrival order. The share also bounds how many of one tenant's statements
run at once in PostgreSQL (its CPU is shared by every tenant).

The project of a request is known only after admission, which runs on a pooled
connection. So the share learns each key's project from admission (``remember``) and
takes the slot BEFORE checkout for a key it has seen: a request that finds no slot in
time gets its 503 before admission, so it is never counted. For a key not seen yet, one
request at a time is admitted (``learn``: the others wait for it, then go the known
way); it takes its slot right after admission, and when none is free gives the
connection back and waits at the FRONT of the project's queue (``enter(...,
admitted=True)``): it has been counted, so it is served — the next slot the project
frees is its own — and never answered 503 for the share (its query then runs on a
connection checked out again: still two round trips). Everything here is in-process: a
dict lookup and a counter per request, no round trip.

A request waiting for a slot can be admitted meanwhile (``Ride``): the coalesced
admission statement of a request that holds a slot takes it along (``take_rides``, at
most ``limit`` of a project's at a time), without a connection of its own. Once admitted
it is counted, so it is served: it moves ahead of the requests not admitted yet, with
the admitted requests' deadline. Refused, it stops waiting with that refusal. A request
never taken is refused for the share, uncounted, as before. This keeps one busy
project's admission batches as large as its requests (docs/performance.md, "The
project's share under one busy project").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from gateway.errors import service_unavailable

# keys whose project the share remembers (least recently used ones are forgotten)
MAX_REMEMBERED_KEYS = 10_000
# what GATEWAY_POOL_MAX_PER_PROJECT defaults to: a quarter of the pool, at most 4
# (docs/scaling.md "A fair share of the pool")
DEFAULT_SHARE_FRACTION = 4
DEFAULT_SHARE_CAP = 4


def default_share(pool_max: int) -> int:
    return max(1, min(DEFAULT_SHARE_CAP, pool_max // DEFAULT_SHARE_FRACTION))


@dataclass(eq=False, slots=True)
class Ride:
    """A request waiting for its project's slot, whose admission a coalesced statement may
    take meanwhile (``ProjectShare.take_rides``): it holds no connection for that, the
    statement goes on a slot holder's. Once taken, ``admission`` is its answer to come (an
    ``Admission``, or the refusal), and the request is counted: it is then served, never
    refused for the share (docs/scaling.md, "A fair share of the pool")."""

    args: tuple[Any, ...]  # its inputs to the admission statement
    project_id: str = ""
    slot: asyncio.Future[None] | None = None  # its wait for a slot
    timer: asyncio.TimerHandle | None = None  # that wait's deadline
    admission: asyncio.Future[Any] | None = None  # set once taken
    passenger: Any = None  # its place in the coalescer's queue, once taken


class ProjectShare:
    """Per-project slots: ``enter`` / ``try_enter`` take one, ``leave`` gives it back."""

    def __init__(self, limit: int, *, admitted_wait_s: float = 30.0) -> None:
        self.limit = max(1, limit)
        # how long a counted request may wait for its slot (the pipeline's own figure)
        self.admitted_wait_s = admitted_wait_s
        # waiting requests whose admission no statement has taken yet, and how many of
        # each project's are taken and still waiting (at most ``limit``)
        self._rides: dict[str, deque[Ride]] = {}
        self._taken: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._admitted: dict[str, deque[asyncio.Future[None]]] = {}
        self._projects: OrderedDict[str, str] = OrderedDict()
        # keys being learned: the first request's admission runs, the others wait for it
        self._learning: dict[str, asyncio.Event] = {}

    def project_of(self, key_hash: str | None) -> str | None:
        if key_hash is None:
            return None
        project = self._projects.get(key_hash)
        if project is not None:
            self._projects.move_to_end(key_hash)
        return project

    def remember(self, key_hash: str | None, project_id: str) -> None:
        if key_hash is None:
            return
        self._projects[key_hash] = project_id
        self._projects.move_to_end(key_hash)
        while len(self._projects) > MAX_REMEMBERED_KEYS:
            self._projects.popitem(last=False)

    def held(self, project_id: str) -> int:
        return self._held.get(project_id, 0)

    async def learn(self, key_hash: str | None, deadline: float) -> tuple[str | None, bool]:
        """``(project, learner)``: the key's project when known. Else, when no request of
        this key is being admitted, ``(None, True)``: this request's admission teaches it
        (call ``learned`` after). Else wait for that request, until ``deadline`` (then
        503): the project, or ``(None, False)`` if its admission failed (a bad key is
        not worth queueing for)."""
        project = self.project_of(key_hash)
        if project is not None or key_hash is None:
            return project, False
        event = self._learning.get(key_hash)
        if event is None:
            self._learning[key_hash] = asyncio.Event()
            return None, True
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await event.wait()
        except TimeoutError:
            raise service_unavailable(
                "this key's first request is still being admitted; retry shortly"
            ) from None
        return self.project_of(key_hash), False

    def learned(self, key_hash: str | None) -> None:
        """The learning request is through admission (or failed): wake the others."""
        if key_hash is not None:
            event = self._learning.pop(key_hash, None)
            if event is not None:
                event.set()

    def try_enter(self, project_id: str) -> bool:
        """A slot now if one is free and nobody of the project waits for one."""
        if (
            self._held.get(project_id, 0) < self.limit
            and not self._waiting.get(project_id)
            and not self._admitted.get(project_id)
        ):
            self._held[project_id] = self._held.get(project_id, 0) + 1
            return True
        return False

    async def enter(
        self,
        project_id: str,
        deadline: float,
        *,
        admitted: bool = False,
        ride: Ride | None = None,
    ) -> None:
        """A slot before ``deadline`` (monotonic), else 503 with ``Retry-After``.

        ``admitted``: the request is already counted, so it waits ahead of the requests
        not admitted yet (its deadline is the statement timeout's, not the pool's).
        ``ride``: while it waits, a coalesced statement may take its admission
        (``take_rides``); if it is refused there, that refusal is raised here."""
        if self.try_enter(project_id):
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        # admitted requests queue apart and are handed a freed slot first
        queues = self._admitted if admitted else self._waiting
        queues.setdefault(project_id, deque()).append(waiter)
        # the deadline as a plain timer on the waiter, not ``asyncio.timeout``: under one
        # busy project every other request waits here (docs/performance.md, "The
        # project's share under one busy project"), and the timer costs about half
        timer = loop.call_at(loop.time() + (deadline - time.monotonic()), _expire, waiter)
        if ride is not None:
            ride.project_id, ride.slot, ride.timer = project_id, waiter, timer
            self._rides.setdefault(project_id, deque()).append(ride)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.leave(project_id)  # handed over just as the wait ended: pass it on
            else:
                waiter.cancel()
                self._forget_waiter(project_id, waiter)
            raise
        finally:
            if ride is None:
                timer.cancel()
            else:
                self._ride_ends(ride)

    def take_rides(self) -> list[Ride]:
        """The waiting requests whose admission the statement being formed can take:
        the oldest of each project, as many as keep its taken ones at ``limit``. Each is
        counted once the statement answers; until then the coalescer's deadline is its
        own."""
        if not self._rides:
            return []
        taken: list[Ride] = []
        for project_id, queue in list(self._rides.items()):
            room = self.limit - self._taken.get(project_id, 0)
            while queue and room > 0:
                ride = queue.popleft()
                if ride.slot is None or ride.slot.done():
                    continue
                if ride.timer is not None:
                    ride.timer.cancel()
                ride.admission = ride.slot.get_loop().create_future()
                ride.admission.add_done_callback(_retrieved)
                self._taken[project_id] = self._taken.get(project_id, 0) + 1
                room -= 1
                taken.append(ride)
            if not queue:
                del self._rides[project_id]
        return taken

    def ride_answered(self, ride: Ride, answer: Any) -> None:
        """A taken ride's admission: an ``Admission``, or the exception that refused it.
        Still waiting for a slot: refused, it stops waiting with that refusal; admitted,
        it moves ahead of the requests not admitted yet, with the admitted requests'
        deadline. Holding its slot already, it reads ``ride.admission`` itself."""
        admission, slot = ride.admission, ride.slot
        if admission is None or slot is None or admission.done():
            return
        refused = isinstance(answer, BaseException)
        if slot.done():
            if refused:
                admission.set_exception(answer)
            else:
                admission.set_result(answer)
            return
        if refused:
            admission.cancel()  # nobody reads it: the slot's wait raises the refusal
            slot.set_exception(answer)
            return
        admission.set_result(answer)
        project_id = ride.project_id
        self._forget_waiter(project_id, slot)
        self._admitted.setdefault(project_id, deque()).append(slot)
        loop = slot.get_loop()
        ride.timer = loop.call_at(loop.time() + self.admitted_wait_s, _expire, slot)

    def _ride_ends(self, ride: Ride) -> None:
        """Its wait for a slot is over (a slot, a refusal, a timeout or a cancel)."""
        if ride.timer is not None:
            ride.timer.cancel()
        project_id = ride.project_id
        if ride.admission is None:
            queue = self._rides.get(project_id)
            if queue is not None:
                with contextlib.suppress(ValueError):
                    queue.remove(ride)
                if not queue:
                    del self._rides[project_id]
            return
        left = self._taken.get(project_id, 0) - 1
        if left > 0:
            self._taken[project_id] = left
        else:
            self._taken.pop(project_id, None)

    def leave(self, project_id: str) -> None:
        """Give the slot to the project's next waiter (admitted ones first), else back to
        the free count."""
        for queues in (self._admitted, self._waiting):
            queue = queues.get(project_id)
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot changes hands: ``held`` stays
                    if not queue:
                        del queues[project_id]
                    return
            queues.pop(project_id, None)
        held = self._held.get(project_id, 0) - 1
        if held > 0:
            self._held[project_id] = held
        else:
            self._held.pop(project_id, None)

    def _forget_waiter(self, project_id: str, waiter: asyncio.Future[None]) -> None:
        for queues in (self._admitted, self._waiting):
            queue = queues.get(project_id)
            if queue is None:
                continue
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del queues[project_id]


def _expire(waiter: asyncio.Future[None]) -> None:
    """A share wait's deadline: 503 with ``Retry-After``, unless a slot came first."""
    if not waiter.done():
        waiter.set_exception(
            service_unavailable(
                "this project already uses its share of the gateway's database"
                " connections and none came free in time; retry shortly"
            )
        )


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A ride's answer may find its request gone (cancelled): marked as read, so that
    asyncio does not log a refusal nobody was there to hear."""
    if not future.cancelled():
        future.exception()
