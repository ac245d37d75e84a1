"""The cell directory's rules (gateway/cells/directory.py) on a real control database."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from gateway.cells import directory
from gateway.control.errors import ConflictError, NotFoundError, ProvisioningError
from tests.support.cells import make_cell_project, register_cell, remove_cell, unique_cell_name


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_home_is_a_cell_and_placement_prefers_the_emptiest(
    db: psycopg.Connection[dict[str, Any]], make_project: Any
) -> None:
    make_project()  # home holds at least one project
    cells = directory.list_cells(db)
    assert cells[0].name == "home" and cells[0].database_url is None
    name = _name("c")
    cell = directory.add_cell(db, name, "postgresql://u:secret@127.0.0.1:1/x", max_connections=50)
    assert cell.as_json()["database_url"] == "postgresql://u:***@127.0.0.1:1/x"
    assert cell.projects == 0
    # an empty cell beats home, which holds a project
    assert directory.choose_cell(db) != "home"
    with pytest.raises(ConflictError):
        directory.add_cell(db, name, "postgresql://127.0.0.1:1/x")
    with pytest.raises(ProvisioningError):
        directory.add_cell(db, "Bad Name", "postgresql://127.0.0.1:1/x")
    with pytest.raises(ConflictError):
        directory.add_cell(db, "home", "postgresql://127.0.0.1:1/x")
    db.execute("DELETE FROM gateway.cells WHERE name = %s", [name])


def test_locate_finds_home_projects_and_placed_ones_and_keys_notify(
    db: psycopg.Connection[dict[str, Any]], pg_url: str
) -> None:
    cell = directory.add_cell(db, _name("c"), "postgresql://127.0.0.1:1/x")
    project_id, name = str(uuid.uuid4()), _name("remote-")
    key_hash = uuid.uuid4().hex * 2
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute("LISTEN gateway_directory")
        directory.register_project(db, project_id, name, cell.name, [key_hash])
        payloads = {n.payload for n in listener.notifies(timeout=2, stop_after=2)}
    assert payloads == {f"project:{project_id}", f"key:{key_hash}"}
    assert directory.locate(db, name) == directory.Placement(project_id, name, cell.name)
    assert directory.locate(db, project_id).cell == cell.name
    assert directory.name_taken(db, name)
    with pytest.raises(NotFoundError):
        directory.locate(db, "no-such-project-" + uuid.uuid4().hex[:6])
    with pytest.raises(NotFoundError):
        directory.locate(db, "bad\x00ref")
    directory.unregister_project(db, project_id)
    assert db.execute(
        "SELECT count(*) AS n FROM gateway.key_cells WHERE key_hash = %s", [key_hash]
    ).fetchone() == {"n": 0}
    db.execute("DELETE FROM gateway.cells WHERE name = %s", [cell.name])


def test_a_project_made_on_a_cell_lives_there_and_is_located_through_the_directory(
    pg_url: str, cell_databases: Any
) -> None:
    (cell_url,) = cell_databases(1)
    name = unique_cell_name()
    register_cell(pg_url, name, cell_url)
    try:
        project = make_cell_project(pg_url, name, cell_url)
        with psycopg.connect(cell_url) as cell, psycopg.connect(pg_url) as control:
            assert cell.execute(
                "SELECT count(*) FROM gateway.projects WHERE id = %s", [project["id"]]
            ).fetchone() == (1,)
            assert control.execute(
                "SELECT count(*) FROM gateway.projects WHERE id = %s", [project["id"]]
            ).fetchone() == (0,)
            assert control.execute(
                "SELECT count(*) FROM gateway.key_cells WHERE project_id = %s", [project["id"]]
            ).fetchone() == (2,)
        with psycopg.connect(pg_url, row_factory=psycopg.rows.dict_row) as control:
            assert directory.locate(control, project["name"]).cell == name
    finally:
        remove_cell(pg_url, name)
