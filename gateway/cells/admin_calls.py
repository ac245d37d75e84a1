"""Where an admin API call runs when projects live in several cells.

A route that names a project (``/projects/{project}/...``) runs on that project's cell:
the directory says which (one lookup on the control database; none at all in a
single-database deployment). Creating a project places it (``cell`` in the body, else
the directory's choice) after checking its name across every cell. After a call on a
cell other than home, the directory learns what changed: a created project, a created
or regenerated key's hash, a deleted project.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg_pool import AsyncConnectionPool

from gateway.auth.keys import hash_key
from gateway.cells import directory
from gateway.control.admin_route import AdminRoute
from gateway.control.errors import ConflictError
from gateway.db.bridge import run_sync


async def placement(
    control: AsyncConnectionPool | None,
    single: bool,
    route: AdminRoute,
    params: Mapping[str, str],
    body: Any,
) -> directory.Placement:
    """The cell the call runs on (``project_id`` empty when the call names no project)."""
    ref = params.get("project")
    if ref is not None:
        if single:
            return directory.Placement("", ref, directory.HOME)
        return await run_sync(control, directory.locate, ref)
    if route.operation_id == "createProject" and (not single or body.cell is not None):
        name = body.cell or await run_sync(control, directory.choose_cell)
        await run_sync(control, directory.get_cell, name)  # an unknown cell: 404
        if await run_sync(control, directory.name_taken, body.name):
            raise ConflictError(f"a project named {body.name!r} already exists", field="name")
        return directory.Placement("", body.name, name)
    return directory.Placement("", "", directory.HOME)


async def record_placement(
    control: AsyncConnectionPool | None,
    route: AdminRoute,
    where: directory.Placement,
    data: Any,
) -> None:
    """Tell the directory what a call on a cell other than home changed."""
    operation = route.operation_id
    if operation == "createProject":
        await run_sync(
            control, directory.register_project, data["id"], data["name"], where.cell, []
        )
    elif operation in ("createKey", "regenerateKey"):
        await run_sync(control, directory.register_key, where.project_id, hash_key(data["key"]))
    elif operation == "deleteProject":
        await run_sync(control, directory.unregister_project, where.project_id)
