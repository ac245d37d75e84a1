"""Provisioning a test project: the project, a ``todos`` table and a public and a server
key, in the database at ``url`` (home's for the ``make_project`` fixture, a cell's for
``tests.support.cells.make_cell_project``)."""

from __future__ import annotations

import uuid
from typing import Any

from gateway.control import tabledef
from gateway.control.keys import create_key
from gateway.control.projects import connect, create_project
from gateway.control.tables import create_table
from tests.support.tables import TODOS_TABLE


def provision_project(
    url: str,
    *,
    rate_limit_per_minute: int = 100_000,
    requests_per_day: int = 10_000_000,
    table: dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The project's JSON with its keys (``public_key``, ``server_key`` and their ids)."""
    with connect(url) as conn:
        project = create_project(
            conn,
            name or f"t-{uuid.uuid4().hex[:12]}",
            rate_limit_per_minute=rate_limit_per_minute,
            requests_per_day=requests_per_day,
        )
        create_table(conn, project.id, tabledef.parse_table(table or TODOS_TABLE))
        public = create_key(conn, project.id, key_type="public")
        server = create_key(conn, project.id, key_type="server")
    return {
        **project.as_json(),
        "public_key": public["key"],
        "public_key_id": public["id"],
        "server_key": server["key"],
        "server_key_id": server["id"],
    }
