"""Cells in tests: extra gateway databases (migrated to head), registered in the control
database, and projects placed on them.

Two kinds of cell database:

* ``cell_database`` — a database on the session's PostgreSQL server: cheap, enough for
  routing, the control plane and moves;
* ``CellServer`` — its own embedded PostgreSQL server, for tests that stop one cell's
  database (blast radius) while the others keep running.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.auth.keys import hash_key
from gateway.cells import directory
from gateway.control.projects import connect
from gateway.db import migrate
from gateway.db.localdb import LocalPostgres
from tests.support.harness import LocalServerControl
from tests.support.projects import provision_project
from tests.support.scratchdb import scratch_database


@contextmanager
def cell_database(pg_url: str, prefix: str = "cell") -> Iterator[str]:
    """A fresh database on the test server, migrated to head; dropped afterwards."""
    with scratch_database(pg_url, prefix) as url:
        migrate.upgrade(url)
        yield url


@contextmanager
def cell_server(max_connections: int = 100) -> Iterator[LocalServerControl]:
    """A separate embedded PostgreSQL server (fsync off), migrated to head: stop and start
    it with the returned control to take the cell down and bring it back."""
    root = Path(tempfile.mkdtemp(prefix="gateway-test-cell-"))
    root.chmod(0o755)
    server = LocalPostgres(root / "data", durable=False, max_connections=max_connections)
    server.start()
    try:
        migrate.upgrade(server.url)
        yield LocalServerControl(server)
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


def unique_cell_name(prefix: str = "c") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def register_cell(
    control_url: str, name: str, url: str, *, max_connections: int | None = None
) -> directory.Cell:
    """Record a cell (its database already migrated) in the control database."""
    with connect(control_url) as conn:
        return directory.add_cell(conn, name, url, max_connections=max_connections)


def remove_cell(control_url: str, name: str) -> None:
    """Forget a cell and the directory rows of its projects (test cleanup)."""
    with connect(control_url) as conn:
        conn.execute("DELETE FROM gateway.project_cells WHERE cell = %s", [name])
        conn.execute(
            "DELETE FROM gateway.cell_moves WHERE source = %s OR target = %s", [name, name]
        )
        conn.execute("DELETE FROM gateway.cells WHERE name = %s", [name])
        conn.commit()


def make_cell_project(
    control_url: str,
    cell: str,
    cell_url: str,
    *,
    rate_limit_per_minute: int = 100_000,
    requests_per_day: int = 10_000_000,
    table: dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Like the ``make_project`` fixture, on cell ``cell`` (database ``cell_url``): the
    project, a ``todos`` table and a public and a server key live in the cell; the
    control database's directory routes the keys there."""
    project = provision_project(
        cell_url,
        rate_limit_per_minute=rate_limit_per_minute,
        requests_per_day=requests_per_day,
        table=table,
        name=name,
    )
    with connect(control_url) as conn:
        directory.register_project(
            conn,
            project["id"],
            project["name"],
            cell,
            [hash_key(project["public_key"]), hash_key(project["server_key"])],
        )
        conn.commit()
    return {**project, "cell": cell}
