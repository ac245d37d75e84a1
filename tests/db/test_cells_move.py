"""``gateway project move``: a project's schema, rows and gateway rows go to another cell.

Real databases (the session's control database and cell databases on the same server),
the command as a real subprocess. Everything the project owns is compared before and
after; the move back to home, an abort before the switch, and refusals are covered.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from gateway.cells import directory, move, move_delta
from gateway.control.projects import connect
from gateway.settings import Settings
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


class Interrupted(Exception):
    """Stands for a move killed at a given state."""


def _rows(url: str, schema: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(f'SELECT id, title FROM "{schema}".todos ORDER BY id').fetchall()


def _fill(url: str, schema: str, n: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            f"INSERT INTO \"{schema}\".todos (title) SELECT 't' || g FROM generate_series(1, %s) g",
            [n],
        )


def _writes_during_copy(url: str, schema: str) -> None:
    """An insert, an update, a delete and a key change, all after the bulk copy's snapshot."""
    with psycopg.connect(url) as conn:
        conn.execute(f"INSERT INTO \"{schema}\".todos (title) VALUES ('late')")
        conn.execute(f"UPDATE \"{schema}\".todos SET title = 'changed' WHERE id = 2")
        conn.execute(f'DELETE FROM "{schema}".todos WHERE id = 3')
        conn.execute(f'UPDATE "{schema}".todos SET id = 1000 WHERE id = 4')


def test_writes_during_the_bulk_copy_reach_the_target_through_the_freeze(
    pg_url: str, two_cells: Any, make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a, a_url), _ = two_cells
    project = make_project()
    schema = project["schema_name"]
    _fill(pg_url, schema, 20)
    recorded = move._record

    def record_then_write(control: Settings, project_id: str, state: str, detail: Any) -> None:
        if state == "copied":  # the bulk copy is done, the freeze has not begun
            _writes_during_copy(pg_url, schema)
        recorded(control, project_id, state, detail)

    monkeypatch.setattr(move, "_record", record_then_write)
    report = move.move_project(Settings(database_url=pg_url), project["name"], a)
    assert report.state == "done" and report.freeze_ms is not None
    rows = _rows(a_url, schema)
    titles = dict(rows)
    assert titles[2] == "changed" and 3 not in titles and 4 not in titles
    assert titles[1000] == "t4" and "late" in titles.values() and len(rows) == 20
    with psycopg.connect(a_url) as conn:  # the tracking stayed behind with the source
        assert conn.execute(
            "SELECT to_regclass(%s) IS NULL", [f'"{schema}".{move_delta.DELTA_TABLE}']
        ).fetchone() == (True,)


def test_an_interrupted_move_resumes_or_rolls_back_at_each_state(
    pg_url: str, two_cells: Any, make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a, a_url), _ = two_cells
    settings = Settings(database_url=pg_url)
    project = make_project()
    schema = project["schema_name"]
    _fill(pg_url, schema, 10)
    before = _rows(pg_url, schema)
    recorded = move._record

    def stop_when_copied(control: Settings, project_id: str, state: str, detail: Any) -> None:
        recorded(control, project_id, state, detail)
        if state == "copied":
            raise Interrupted

    def state() -> Any:
        with connect(pg_url) as control:
            row = control.execute(
                "SELECT state FROM gateway.cell_moves WHERE project_id = %s", [project["id"]]
            ).fetchone()
        return row and row["state"]

    # killed after the bulk copy: rolled back, the source as it was, no tracking left
    monkeypatch.setattr(move, "_record", stop_when_copied)
    with pytest.raises(Interrupted):
        move.move_project(settings, project["name"], a)
    assert state() == "copied"
    assert move.move_project(settings, project["name"], a, abort=True).state == "rolled back"
    assert state() is None and _rows(pg_url, schema) == before
    assert _snapshot(a_url, project)["rows"] is None
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT to_regclass(%s) IS NULL", [f'"{schema}".{move_delta.DELTA_TABLE}']
        ).fetchone() == (True,)
    # killed after the bulk copy again, then resumed by running the move again
    with pytest.raises(Interrupted):
        move.move_project(settings, project["name"], a)
    _writes_during_copy(pg_url, schema)  # the source kept serving meanwhile
    expected = _rows(pg_url, schema)
    monkeypatch.setattr(move, "_record", recorded)
    assert move.move_project(settings, project["name"], a).state == "done"
    assert _rows(a_url, schema) == expected and state() is None
    # killed after the switch, before the source copy was dropped: finished on resume
    finish = move._finish

    def stop_before_cleanup(*args: Any) -> Any:
        raise Interrupted

    monkeypatch.setattr(move, "_finish", stop_before_cleanup)
    with pytest.raises(Interrupted):
        move.move_project(settings, project["name"], "home")
    assert state() == "switched"
    with connect(pg_url) as control:
        assert directory.locate(control, project["name"]).cell == "home"
    assert_refused(
        run_cli(pg_url, "project", "move", project["name"], "--to", a, "--abort"), "switched"
    )
    monkeypatch.setattr(move, "_finish", finish)
    assert move.move_project(settings, project["name"], "home").state == "done"
    assert state() is None and _rows(pg_url, schema) == expected
    assert _snapshot(a_url, project)["rows"] is None


def test_the_delta_copies_a_truncated_table_or_one_without_a_key_whole(
    cell_databases: Any,
) -> None:
    src_url, dst_url = cell_databases(2)
    schema = f"delta_{uuid.uuid4().hex[:8]}"
    ddl = (
        f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".keyed (id int PRIMARY KEY, v text);'
        f' CREATE TABLE "{schema}".loose (v text)'
    )
    tables = ["keyed", "loose"]
    with (
        psycopg.connect(src_url, row_factory=dict_row) as src,
        psycopg.connect(dst_url, row_factory=dict_row) as dst,
    ):
        src.execute(ddl)
        dst.execute(ddl)
        src.execute(f"INSERT INTO \"{schema}\".keyed SELECT g, 'a' FROM generate_series(1, 5) g")
        src.execute(f"INSERT INTO \"{schema}\".loose VALUES ('x'), ('y')")
        src.commit()
        dst.commit()
        move_delta.install_tracking(src, schema, tables)
        with src.transaction(), dst.transaction():
            for table in tables:
                name = sql.Identifier(schema, table)
                move._copy(src, dst, name, name)
        src.execute(f'TRUNCATE "{schema}".keyed')
        src.execute(f"INSERT INTO \"{schema}\".keyed VALUES (9, 'b')")
        src.execute(f"INSERT INTO \"{schema}\".loose VALUES ('z')")
        src.commit()
        with src.transaction(), dst.transaction():
            move_delta.apply_delta(src, dst, schema, tables, move._copy)
        for table in tables:
            query = f'SELECT * FROM "{schema}".{table} ORDER BY 1'
            assert dst.execute(query).fetchall() == src.execute(query).fetchall()
        assert len(dst.execute(f'SELECT * FROM "{schema}".loose').fetchall()) == 3
