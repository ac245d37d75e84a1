"""Table definitions the tests create in their projects."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from gateway.control.devserver import DEMO_TABLE

# the demo project's table, as `make run` creates it: what `make_project` gives by default
TODOS_TABLE: dict[str, Any] = DEMO_TABLE


def todos(project: dict[str, Any]) -> sql.Identifier:
    """The project's ``todos`` table, for SQL written by the test (as tenant traffic)."""
    return sql.Identifier(project["schema_name"], "todos")
