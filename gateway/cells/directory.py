"""The cell directory in the control database: which cells exist, and where each project lives.

Synchronous, on a control connection (``gateway.control.projects.connect``): what the CLI,
the admin API and an online move use. The request path never calls these; it routes a key
with its own cache (``router.py``), filled from the same tables.

Rules, written once here:

* ``home`` is the control database itself (no URL of its own). A project with no row in
  ``gateway.project_cells`` lives on ``home``, so a single-database deployment has no
  directory rows at all and behaves exactly as before.
* A project off ``home`` has a ``project_cells`` row (id, name, cell) and one
  ``key_cells`` row per API key hash: a key hash that is not there is ``home``'s.
* Project names are unique across all cells: ``name_taken`` looks in both places.
* URLs carry passwords: ``Cell.as_json`` and everything shown to people redact them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from gateway.control.errors import ConflictError, NotFoundError, ProvisioningError
from gateway.control.projects import PROJECT_NAME_RE, connect, list_projects
from gateway.settings import Settings

HOME = "home"
CELL_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def redact_url(url: str | None) -> str | None:
    """A database URL fit to show: the password replaced by ``***``."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Cell:
    """One PostgreSQL database projects are placed on. ``database_url`` is the pooled URL
    (requests), ``direct_url`` the one for LISTEN, migrations and provisioning; both are
    None for ``home``, whose URLs are the instance's own settings."""

    name: str
    database_url: str | None
    direct_url: str | None
    max_connections: int | None
    status: str
    projects: int = 0

    @property
    def is_home(self) -> bool:
        return self.name == HOME

    def pooled_url(self, control: Settings) -> str:
        return control.database_url if self.is_home else str(self.database_url)

    def direct(self, control: Settings) -> str:
        """The URL for LISTEN, migrations and provisioning (never through a pooler)."""
        if self.is_home:
            return control.direct_url
        return self.own_direct_url

    @property
    def own_direct_url(self) -> str:
        """A cell's own direct URL, its pooled one when it has none (not for ``home``,
        whose URLs are the instance's settings: ``direct``)."""
        return self.direct_url or str(self.database_url)

    def settings(self, control: Settings) -> Settings:
        """The instance's settings with this cell's URLs: what the cell's pool, listener
        and workers are built from (home: the settings unchanged)."""
        if self.is_home:
            return control
        return control.with_changes(
            database_url=self.pooled_url(control), database_direct_url=self.direct_url or ""
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "database_url": redact_url(self.database_url),
            "direct_url": redact_url(self.direct_url),
            "max_connections": self.max_connections,
            "status": self.status,
            "projects": self.projects,
        }


@dataclass(frozen=True)
class Placement:
    """Where a project lives: its id and name, and the name of its cell."""

    project_id: str
    name: str
    cell: str


CELLS_SELECT = """
    SELECT c.name, c.database_url, c.direct_url, c.max_connections, c.status,
           CASE WHEN c.name = 'home' THEN (SELECT count(*) FROM gateway.projects)
                ELSE (SELECT count(*) FROM gateway.project_cells pc WHERE pc.cell = c.name)
           END AS projects
      FROM gateway.cells c
"""


def _cell(row: Any) -> Cell:
    if isinstance(row, dict):
        values = [
            row["name"],
            row["database_url"],
            row["direct_url"],
            row["max_connections"],
            row["status"],
            row["projects"],
        ]
    else:
        values = list(row)
    name, url, direct, budget, status, count = values
    return Cell(name, url, direct, budget, status, int(count))


def list_cells(conn: psycopg.Connection[Any]) -> list[Cell]:
    """Every cell, ``home`` first, then by name, with its number of projects."""
    rows = conn.execute(CELLS_SELECT + " ORDER BY c.name <> 'home', c.name").fetchall()
    return [_cell(row) for row in rows]


def get_cell(conn: psycopg.Connection[Any], name: str) -> Cell:
    if not CELL_NAME_RE.match(name):
        raise NotFoundError(f"no cell {name!r}", field="cell")
    row = conn.execute(CELLS_SELECT + " WHERE c.name = %s", [name]).fetchone()
    if row is None:
        raise NotFoundError(f"no cell {name!r}", field="cell")
    return _cell(row)


def add_cell(
    conn: psycopg.Connection[Any],
    name: str,
    database_url: str,
    *,
    direct_url: str | None = None,
    max_connections: int | None = None,
) -> Cell:
    """Record a cell (the caller has already migrated its database to head)."""
    if not CELL_NAME_RE.match(name):
        raise ProvisioningError(
            f"cell name {name!r} is not valid (a lowercase letter, then up to 31 of a-z 0-9 _ -)",
            field="name",
        )
    if name == HOME:
        raise ConflictError("the cell 'home' is the control database", field="name")
    if not database_url.startswith(("postgresql://", "postgres://")):
        raise ProvisioningError("--url must be a postgresql:// URL", field="url")
    if max_connections is not None and max_connections <= 0:
        raise ProvisioningError("--max-connections must be positive", field="max_connections")
    with conn.transaction():
        if conn.execute("SELECT 1 FROM gateway.cells WHERE name = %s", [name]).fetchone():
            raise ConflictError(f"a cell named {name!r} already exists", field="name")
        conn.execute(
            "INSERT INTO gateway.cells (name, database_url, direct_url, max_connections)"
            " VALUES (%s, %s, %s, %s)",
            [name, database_url, direct_url or None, max_connections],
        )
    return get_cell(conn, name)


def choose_cell(conn: psycopg.Connection[Any]) -> str:
    """The default placement of a new project: the active cell with the fewest projects
    (ties: ``home`` first, then by name)."""
    cells = [cell for cell in list_cells(conn) if cell.status == "active"]
    if not cells:
        return HOME
    return min(cells, key=lambda cell: (cell.projects, not cell.is_home, cell.name)).name


def name_taken(conn: psycopg.Connection[Any], name: str) -> bool:
    """A project name is unique across every cell."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM gateway.projects WHERE name = %s)"
        " OR EXISTS (SELECT 1 FROM gateway.project_cells WHERE name = %s)",
        [name, name],
    ).fetchone()
    return bool(row and (row["?column?"] if isinstance(row, dict) else row[0]))


def locate(conn: psycopg.Connection[Any], ref: str) -> Placement:
    """Where the project named ``ref`` (an id or a name) lives. Home's own table first:
    most deployments have no other cell."""
    if "\x00" in ref:
        raise NotFoundError(f"no project {ref!r}")
    try:
        project_id: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        project_id = None
    if project_id is None and not PROJECT_NAME_RE.match(ref):
        raise NotFoundError(f"no project {ref!r}")
    column = "id" if project_id is not None else "name"
    value: Any = project_id if project_id is not None else ref
    row = conn.execute(
        f"SELECT id::text, name, 'home' FROM gateway.projects WHERE {column} = %s"
        f" UNION ALL SELECT project_id::text, name, cell FROM gateway.project_cells"
        f" WHERE {'project_id' if column == 'id' else 'name'} = %s LIMIT 1",
        [value, value],
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no project {ref!r}")
    values = list(row.values()) if isinstance(row, dict) else list(row)
    return Placement(project_id=values[0], name=values[1], cell=values[2])


def register_project(
    conn: psycopg.Connection[Any], project_id: str, name: str, cell: str, key_hashes: list[str]
) -> None:
    """Record (or re-point) a project placed off ``home``, with its keys' hashes, in one
    transaction. Every instance drops its cached routes for it (NOTIFY)."""
    if cell == HOME:
        unregister_project(conn, project_id)
        return
    with conn.transaction():
        conn.execute(
            "INSERT INTO gateway.project_cells (project_id, name, cell) VALUES (%s, %s, %s)"
            " ON CONFLICT (project_id) DO UPDATE"
            " SET cell = EXCLUDED.cell, name = EXCLUDED.name, updated_at = now()",
            [project_id, name, cell],
        )
        for key_hash in key_hashes:
            register_key(conn, project_id, key_hash)


def unregister_project(conn: psycopg.Connection[Any], project_id: str) -> None:
    """The project lives on ``home`` now (or no longer exists): its rows go (keys cascade)."""
    conn.execute("DELETE FROM gateway.project_cells WHERE project_id = %s", [project_id])


def register_key(conn: psycopg.Connection[Any], project_id: str, key_hash: str) -> None:
    conn.execute(
        "INSERT INTO gateway.key_cells (key_hash, project_id) VALUES (%s, %s)"
        " ON CONFLICT (key_hash) DO UPDATE SET project_id = EXCLUDED.project_id",
        [key_hash, project_id],
    )


@contextmanager
def connect_cell(control: Settings, cell: Cell) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A short-lived control-style connection (dict rows) to a cell's database, on its
    direct URL: provisioning on a fresh connection keeps no catalog cache behind."""
    with connect(cell.direct(control)) as conn:
        yield conn


def list_every_cell(control: psycopg.Connection[Any], *, limit: int, offset: int) -> dict[str, Any]:
    """One page over every cell's projects, each naming its ``cell``: the cells in
    ``list_cells`` order (home first, on ``control`` itself; the others on a short
    connection of their own), each cell's projects oldest first, ``offset`` and
    ``limit`` counted over that concatenation and ``total`` summed. Each cell answers one
    page query (its count comes with it). A cell that is down fails the page."""
    found: list[dict[str, Any]] = []
    total = 0
    skip = offset
    for cell in list_cells(control):
        with nullcontext(control) if cell.is_home else connect(cell.own_direct_url) as conn:
            wanted = limit - len(found)
            page = list_projects(conn, limit=max(wanted, 1), offset=skip)
        if wanted > 0:
            found.extend({**p, "cell": cell.name} for p in page["projects"])
        total += page["total"]
        skip = max(0, skip - page["total"])
    return {
        "projects": found,
        "total": total,
        "limit": limit,
        "offset": offset,
        "hasMore": offset + len(found) < total,
    }
