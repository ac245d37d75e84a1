"""``CellRouter``: which cell holds the project of an API key, without a round trip when warm.

Each instance keeps a bounded LRU from a key's SHA-256 to its cell (and project). A miss
costs ONE query on the control database (``gateway.key_cells`` joined with
``gateway.project_cells``); a hash that is not there belongs to ``home``, and that answer
is cached too, so an unknown or invalid key costs one lookup and then goes to home, whose
admission refuses it as always. Concurrent misses for one hash share one query.

The cache is kept right by NOTIFY ``gateway_directory`` on the home listener:
``key:<hash>`` drops that hash (a key created for a project off home routes at once),
``project:<uuid>`` drops every hash of that project (a project that moved routes to its
new cell on the next request), and a listener reconnect drops everything. While the
listener is down, an entry older than ``STALE_AFTER_S`` is looked up again.

With no cell but home (a single-database deployment) the router is never consulted: it
costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from gateway.db.pool import acquire

HOME = "home"
CAPACITY = 100_000  # entries (~330 bytes each with the hash string, measured: ~33 MB at most)
STALE_AFTER_S = 5.0  # an entry's life while invalidations are not live

ROUTE_SQL = """
SELECT pc.cell, pc.project_id::text
  FROM gateway.key_cells k
  JOIN gateway.project_cells pc ON pc.project_id = k.project_id
 WHERE k.key_hash = %s
"""


class CellRouter:
    """Key hash -> (cell, project id or None for home), bounded, invalidated by NOTIFY."""

    def __init__(
        self,
        control_pool: AsyncConnectionPool | None,
        *,
        capacity: int = CAPACITY,
        live: Callable[[], bool] = lambda: True,
    ) -> None:
        self.pool = control_pool
        self.capacity = capacity
        self.live = live
        # hash -> (cell, project id | None, when looked up)
        self._routes: OrderedDict[str, tuple[str, str | None, float]] = OrderedDict()
        self._by_project: dict[str, set[str]] = {}
        self._inflight: dict[str, asyncio.Future[tuple[str, str | None]]] = {}
        self._epoch = 0  # bumped by every invalidation
        self.lookups = 0
        self.hits = 0
        self.invalidations = 0

    # --- the request path ----------------------------------------------------------------

    async def cell_of(self, key_hash: str) -> str:
        """The cell of the key whose hash is ``key_hash`` (``home`` when the directory has
        no other answer). Raises ``psycopg.OperationalError`` when the control database
        can't be asked (the caller answers 503)."""
        entry = self._routes.get(key_hash)
        if entry is not None and (self.live() or time.monotonic() - entry[2] < STALE_AFTER_S):
            self._routes.move_to_end(key_hash)
            self.hits += 1
            return entry[0]
        pending = self._inflight.get(key_hash)
        if pending is not None:
            return (await asyncio.shield(pending))[0]
        future: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()
        self._inflight[key_hash] = future
        epoch = self._epoch
        try:
            cell, project_id = await self._lookup(key_hash)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result((cell, project_id))
            # an invalidation that arrived while the query ran may name this very route:
            # the answer serves this request but is not kept
            if epoch == self._epoch:
                self._remember(key_hash, cell, project_id)
            return cell
        finally:
            del self._inflight[key_hash]

    async def _lookup(self, key_hash: str) -> tuple[str, str | None]:
        self.lookups += 1
        if self.pool is None:
            return HOME, None
        async with acquire(self.pool) as conn:
            cur = await conn.execute(ROUTE_SQL, [key_hash], prepare=False)
            row = await cur.fetchone()
        if row is None:
            return HOME, None
        return str(row[0]), str(row[1])

    def _remember(self, key_hash: str, cell: str, project_id: str | None) -> None:
        routes = self._routes
        old = routes.pop(key_hash, None)
        if old is not None:
            self._unindex(key_hash, old[1])
        routes[key_hash] = (cell, project_id, time.monotonic())
        if project_id is not None:
            self._by_project.setdefault(project_id, set()).add(key_hash)
        while len(routes) > self.capacity:
            evicted, (_, evicted_project, _) = routes.popitem(last=False)
            self._unindex(evicted, evicted_project)

    def _unindex(self, key_hash: str, project_id: str | None) -> None:
        if project_id is None:
            return
        hashes = self._by_project.get(project_id)
        if hashes is not None:
            hashes.discard(key_hash)
            if not hashes:
                del self._by_project[project_id]

    # --- invalidation ---------------------------------------------------------------------

    def on_notify(self, payload: str) -> None:
        """A ``gateway_directory`` notification: drop what it names."""
        self.invalidations += 1
        self._epoch += 1
        kind, _, value = payload.partition(":")
        if kind == "key":
            entry = self._routes.pop(value, None)
            if entry is not None:
                self._unindex(value, entry[1])
        elif kind == "project":
            for key_hash in self._by_project.pop(value, set()):
                self._routes.pop(key_hash, None)
        elif kind != "cells":
            self.forget_all()

    def forget_all(self) -> None:
        """After a reconnect of the listener: notifications may have been missed."""
        self._epoch += 1
        self._routes.clear()
        self._by_project.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._routes),
            "capacity": self.capacity,
            "lookups": self.lookups,
            "hits": self.hits,
            "invalidations": self.invalidations,
        }
