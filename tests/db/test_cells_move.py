"""``gateway project move``: a project's schema, rows and gateway rows go to another cell.

Real databases (the session's control database and cell databases on the same server),
the command as a real subprocess. Everything the project owns is compared before and
after; the move back to home, an abort before the switch, and refusals are covered.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from gateway.cells import directory
from gateway.control.projects import connect
from tests.support.cells import make_cell_project, register_cell, remove_cell, unique_cell_name
from tests.support.cli import assert_refused, cli_json, run_cli

COUNTED = (
    ("projects", "id"),
    ("api_keys", "project_id"),
    ("table_registry", "project_id"),
    ("auth_users", "project_id"),
    ("column_registry", "(SELECT project_id FROM gateway.table_registry t WHERE t.id = table_id)"),
)


def _snapshot(url: str, project: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        counts = {
            table: conn.execute(
                f"SELECT count(*) AS n FROM gateway.{table} WHERE {column} = %s", [project["id"]]
            ).fetchone()["n"]
            for table, column in COUNTED
        }
        exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS e", [f"{project['schema_name']}.todos"]
        ).fetchone()["e"]
        rows = (
            [
                r["title"]
                for r in conn.execute(
                    f'SELECT title FROM "{project["schema_name"]}".todos ORDER BY id'
                ).fetchall()
            ]
            if exists
            else None
        )
    return {"counts": counts, "rows": rows}


@pytest.fixture
def two_cells(pg_url: str, cell_databases: Any) -> Any:
    urls = cell_databases(2)
    names = [unique_cell_name("m"), unique_cell_name("n")]
    for name, url in zip(names, urls, strict=True):
        register_cell(pg_url, name, url)
    yield list(zip(names, urls, strict=True))
    for name in names:
        remove_cell(pg_url, name)


def test_a_project_moves_between_cells_and_back_home_with_everything(
    pg_url: str, two_cells: Any, make_project: Any
) -> None:
    (a, a_url), (b, b_url) = two_cells
    # the targets hold projects already: their registry ids are taken there
    make_cell_project(pg_url, a, a_url)
    make_cell_project(pg_url, b, b_url)
    project = make_project()
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            f"INSERT INTO \"{project['schema_name']}\".todos (title) SELECT 't' || g"
            " FROM generate_series(1, 50) g"
        )
        conn.execute(
            "INSERT INTO gateway.auth_users (project_id, email, password_hash)"
            " VALUES (%s, 'u@example.com', 'x')",
            [project["id"]],
        )
    before = _snapshot(pg_url, project)
    assert before["counts"]["api_keys"] == 2 and len(before["rows"]) == 50
    moved = cli_json(pg_url, "project", "move", project["name"], "--to", a)
    assert moved["state"] == "done" and moved["freeze_ms"] is not None
    assert _snapshot(a_url, project) == before
    gone = _snapshot(pg_url, project)
    assert gone["rows"] is None and all(n == 0 for n in gone["counts"].values())
    with connect(pg_url) as control:
        assert directory.locate(control, project["name"]).cell == a
        keys = control.execute(
            "SELECT count(*) AS n FROM gateway.key_cells WHERE project_id = %s", [project["id"]]
        ).fetchone()
        assert keys["n"] == 2
        assert (
            control.execute(
                "SELECT count(*) AS n FROM gateway.cell_moves WHERE project_id = %s",
                [project["id"]],
            ).fetchone()["n"]
            == 0
        )
    # a new row and a cell-to-cell move, then home again
    with psycopg.connect(a_url) as conn:
        conn.execute(f"INSERT INTO \"{project['schema_name']}\".todos (title) VALUES ('on a')")
    cli_json(pg_url, "project", "move", project["id"], "--to", b)
    on_b = _snapshot(b_url, project)
    assert on_b["rows"][-1] == "on a" and len(on_b["rows"]) == 51
    # identity continues after the copied rows
    with psycopg.connect(b_url) as conn:
        new_id = conn.execute(
            f"INSERT INTO \"{project['schema_name']}\".todos (title) VALUES ('on b') RETURNING id"
        ).fetchone()[0]
    assert new_id == 52
    cli_json(pg_url, "project", "move", project["name"], "--to", "home")
    home = _snapshot(pg_url, project)
    assert len(home["rows"]) == 52 and home["counts"] == before["counts"]
    with connect(pg_url) as control:
        assert directory.locate(control, project["name"]).cell == "home"


def test_refusals_and_abort(pg_url: str, two_cells: Any) -> None:
    (a, a_url), (b, _) = two_cells
    project = make_cell_project(pg_url, a, a_url)
    assert_refused(run_cli(pg_url, "project", "move", project["name"], "--to", a), "already lives")
    assert_refused(run_cli(pg_url, "project", "move", project["name"], "--to", "nosuch"), "no cell")
    assert_refused(
        run_cli(pg_url, "project", "move", project["name"], "--to", b, "--abort"),
        "not being moved",
    )
    # an interrupted move (recorded, partial copy on the target) is rolled back
    with connect(pg_url) as control:
        control.execute(
            "INSERT INTO gateway.cell_moves (project_id, source, target, state)"
            " VALUES (%s, %s, %s, 'copying')",
            [project["id"], a, b],
        )
        control.commit()
    rolled = cli_json(pg_url, "project", "move", project["name"], "--to", b, "--abort")
    assert rolled["state"] == "rolled back"
    # and a recorded, interrupted move is resumed by running it again
    with connect(pg_url) as control:
        control.execute(
            "INSERT INTO gateway.cell_moves (project_id, source, target, state)"
            " VALUES (%s, %s, %s, 'copying')",
            [project["id"], a, b],
        )
        control.commit()
    assert cli_json(pg_url, "project", "move", project["name"], "--to", b)["state"] == "done"
