"""The per-instance metadata cache: each project's tables and columns, as one shared value.

- A miss loads the project's whole catalog (tables + columns + flags) in ONE query.
- Single-flight: concurrent misses for one project wait for one load. A failed load
  reaches every waiter and is not cached.
- Bounded: at most ``metadata_cache_max_projects`` projects, least recently used evicted.
- ``metadata_ttl_s`` is only a safety net: the listener (gateway/listener.py) drops an
  entry as soon as a change to its project commits, and drops everything after each
  (re)connect.
- While the listener is disconnected, nothing older than ``metadata_degraded_ttl_s`` is
  served: an entry is "fresh as of" the later of its load and the moment the listener went
  down (until then notifications kept it fresh), and expires ``degraded_ttl`` after that.
- A load that an invalidation overtook (started before, finished after) is handed to its
  waiters but never cached, so a change is never papered over by a slower, older load.

Catalogs are frozen (gateway/catalog.py) and their table map is read-only, so one object
is shared by every request of the instance.
"""

from __future__ import annotations

import asyncio
import time
import types
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.metadata.catalog import ColumnInfo, ProjectCatalog, TableInfo
from gateway.settings import Settings

# One statement: the project row plus every table with its columns, as JSON text (parsed
# with orjson: faster than psycopg's json loader and independent of the connection's
# adapters).
LOAD_SQL = """
SELECT p.schema_name,
       coalesce((
         SELECT json_agg(json_build_object(
                  'name', t.name,
                  'is_system_table', t.is_system_table,
                  'allow_client_read', t.allow_client_read,
                  'allow_client_write', t.allow_client_write,
                  'realtime', t.realtime,
                  'owner_column', t.owner_column,
                  'row_access', t.row_access,
                  'columns', coalesce((
                      SELECT json_agg(json_build_object(
                               'name', c.name,
                               'data_type', c.data_type,
                               'is_nullable', c.is_nullable,
                               'is_primary_key', c.is_primary_key,
                               'has_default', c.has_default,
                               'is_sensitive', c.is_sensitive,
                               'allow_client_read', c.allow_client_read,
                               'allow_client_write', c.allow_client_write)
                             ORDER BY c.ordinal, c.id)
                        FROM gateway.column_registry c
                       WHERE c.table_id = t.id), '[]'::json))
                ORDER BY t.name)
           FROM gateway.table_registry t
          WHERE t.project_id = p.id), '[]'::json)::text AS tables
  FROM gateway.projects p
 WHERE p.id = %s::uuid
"""


class ProjectNotFound(LookupError):
    """The project id is not (or no longer) in gateway.projects."""


class ListenerState(Protocol):
    """What the cache needs to know about the listener (gateway.listener.MetadataListener)."""

    @property
    def connected(self) -> bool: ...

    @property
    def disconnected_since(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    catalog: ProjectCatalog
    loaded_at: float
    expires_at: float


class _LeaderCancelled(Exception):
    """The task that ran a load was cancelled; its waiters try again themselves."""


class _Flight:
    __slots__ = ("future", "invalidated")

    def __init__(self) -> None:
        self.future: asyncio.Future[ProjectCatalog] = asyncio.get_running_loop().create_future()
        self.invalidated = False


def build_catalog(project_id: str, schema_name: str, tables_json: str | bytes) -> ProjectCatalog:
    tables: dict[str, TableInfo] = {}
    for t in orjson.loads(tables_json):
        columns = tuple(
            ColumnInfo(
                name=c["name"],
                data_type=c["data_type"],
                is_nullable=c["is_nullable"],
                is_primary_key=c["is_primary_key"],
                is_sensitive=c["is_sensitive"],
                allow_client_read=c["allow_client_read"],
                allow_client_write=c["allow_client_write"],
                has_default=c["has_default"],
            )
            for c in t["columns"]
        )
        tables[t["name"]] = TableInfo(
            name=t["name"],
            columns=columns,
            is_system_table=t["is_system_table"],
            allow_client_read=t["allow_client_read"],
            allow_client_write=t["allow_client_write"],
            realtime=t["realtime"],
            owner_column=t.get("owner_column"),
            row_access=t.get("row_access") or "all",
        )
    # Read-only view: the catalog is shared by every request of the instance.
    frozen_tables = cast(dict[str, TableInfo], types.MappingProxyType(tables))
    return ProjectCatalog(project_id=project_id, schema_name=schema_name, tables=frozen_tables)


async def load_catalog(conn: AsyncConnection[Any], project_id: str) -> ProjectCatalog:
    """One round trip: the project's catalog as of now."""
    cur = await conn.execute(LOAD_SQL, [project_id])
    row = await cur.fetchone()
    if row is None:
        raise ProjectNotFound(project_id)
    if isinstance(row, dict):
        schema_name, tables_json = row["schema_name"], row["tables"]
    else:
        schema_name, tables_json = row[0], row[1]
    return build_catalog(project_id, schema_name, tables_json)


class MetadataCache:
    """Per instance: project id → ``ProjectCatalog``. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool | None,
        *,
        listener: ListenerState | None = None,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable[[AsyncConnection[Any], str], Any] = load_catalog,
    ) -> None:
        self.pool = pool
        self.max_projects = settings.metadata_cache_max_projects
        self.ttl_s = settings.metadata_ttl_s
        self.degraded_ttl_s = settings.metadata_degraded_ttl_s
        self.listener = listener
        self._clock = clock
        self._loader = loader
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self._counters = {
            "hits": 0,
            "misses": 0,
            "loads": 0,
            "load_failures": 0,
            "joined": 0,
            "invalidations": 0,
            "full_invalidations": 0,
            "evictions": 0,
            "expirations": 0,
            "discarded_loads": 0,
        }

    # --- the listener's view -----------------------------------------------------------

    def attach_listener(self, listener: ListenerState | None) -> None:
        """Entries then follow the degraded TTL while ``listener.connected`` is false."""
        self.listener = listener

    def _live(self) -> bool:
        return self.listener is None or self.listener.connected

    def _is_valid(self, entry: _Entry, now: float) -> bool:
        if now >= entry.expires_at:
            return False
        if self._live():
            return True
        # Disconnected: notifications stopped at ``down``; nothing older than the degraded
        # TTL past the later of the load and that moment.
        assert self.listener is not None
        down = self.listener.disconnected_since
        fresh_as_of = entry.loaded_at if down is None else max(entry.loaded_at, down)
        return now - fresh_as_of < self.degraded_ttl_s

    # --- API -----------------------------------------------------------------------------

    async def get(
        self, project_id: str, *, conn: AsyncConnection[Any] | None = None
    ) -> ProjectCatalog:
        """The project's catalog; loads it (once, however many ask) on a miss.

        ``conn``: a connection the caller already holds, used for the load instead of a
        second checkout from the pool. Raises ``ProjectNotFound`` for an unknown project and
        whatever the load raised (e.g. ``psycopg.OperationalError``) — never cached.
        """
        while True:
            entry = self._entries.get(project_id)
            now = self._clock()
            if entry is not None:
                if self._is_valid(entry, now):
                    self._entries.move_to_end(project_id)
                    self._counters["hits"] += 1
                    return entry.catalog
                del self._entries[project_id]
                self._counters["expirations"] += 1
            flight = self._flights.get(project_id)
            if flight is not None:
                self._counters["joined"] += 1
                try:
                    return await asyncio.shield(flight.future)
                except _LeaderCancelled:
                    continue  # the loading request went away: load again ourselves
            self._counters["misses"] += 1
            return await self._load(project_id, conn)

    async def _load(self, project_id: str, conn: AsyncConnection[Any] | None) -> ProjectCatalog:
        flight = _Flight()
        self._flights[project_id] = flight
        self._counters["loads"] += 1
        live_at_start = self._live()
        try:
            try:
                uuid.UUID(project_id)
            except ValueError:
                raise ProjectNotFound(project_id) from None
            if conn is not None:
                catalog = await self._loader(conn, project_id)
            else:
                if self.pool is None:
                    raise RuntimeError("MetadataCache has no pool and no connection was given")
                async with self.pool.connection() as pooled:
                    catalog = await self._loader(pooled, project_id)
        except asyncio.CancelledError:
            self._finish_flight(project_id, flight)
            flight.future.set_exception(_LeaderCancelled())
            flight.future.exception()  # mark retrieved: waiters may be none
            raise
        except BaseException as exc:
            self._counters["load_failures"] += 1
            self._finish_flight(project_id, flight)
            flight.future.set_exception(exc)
            flight.future.exception()
            raise
        self._finish_flight(project_id, flight)
        if flight.invalidated:
            # An invalidation arrived while we loaded: this result may predate the change.
            # Hand it to those who asked before the invalidation, never cache it.
            self._counters["discarded_loads"] += 1
        else:
            now = self._clock()
            live = live_at_start and self._live()
            ttl = self.ttl_s if live else min(self.ttl_s, self.degraded_ttl_s)
            self._entries[project_id] = _Entry(catalog, loaded_at=now, expires_at=now + ttl)
            self._entries.move_to_end(project_id)
            while len(self._entries) > self.max_projects:
                self._entries.popitem(last=False)
                self._counters["evictions"] += 1
        flight.future.set_result(catalog)
        return catalog

    def _finish_flight(self, project_id: str, flight: _Flight) -> None:
        if self._flights.get(project_id) is flight:
            del self._flights[project_id]

    def invalidate(self, project_id: str) -> None:
        """Drop one project's entry; a load in progress for it will not be cached."""
        self._counters["invalidations"] += 1
        self._entries.pop(project_id, None)
        flight = self._flights.pop(project_id, None)
        if flight is not None:
            flight.invalidated = True

    def invalidate_all(self) -> None:
        """Drop everything (after a listener (re)connect, or a ``*`` notification)."""
        self._counters["full_invalidations"] += 1
        self._entries.clear()
        for flight in self._flights.values():
            flight.invalidated = True
        self._flights.clear()

    def peek(self, project_id: str) -> ProjectCatalog | None:
        """The cached catalog without loading or touching the LRU order (for tests)."""
        entry = self._entries.get(project_id)
        return entry.catalog if entry is not None else None

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        return {
            **self._counters,
            "entries": len(self._entries),
            "in_flight": len(self._flights),
            "max_entries": self.max_projects,
        }
