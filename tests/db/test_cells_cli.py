"""``gateway cell add|list`` and the project commands on a cell, as real subprocesses.

The control database is the session's; the cell is a fresh database on the same server
with a password-bearing URL form (the password never printed). Every project command
finds the project's cell through the directory.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from gateway.auth.keys import hash_key
from gateway.cells import directory
from gateway.control.projects import connect
from tests.support.cells import remove_cell, unique_cell_name
from tests.support.cli import assert_refused, cli_json, run_cli
from tests.support.scratchdb import scratch_database


@pytest.fixture
def bare_database(pg_url: str) -> Iterator[str]:
    """An empty database (not migrated): ``cell add`` migrates it."""
    with scratch_database(pg_url, "cellcli") as url:
        yield url


def _with_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = f"postgres:s3cret-pw@{parts.hostname}:{parts.port}"  # trust auth ignores it
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def test_cell_add_list_and_a_project_lives_on_its_cell(pg_url: str, bare_database: str) -> None:
    name = unique_cell_name("k")
    url = _with_password(bare_database)
    try:
        added = run_cli(
            pg_url, "cell", "add", name, "--url", url, "--max-connections", "50", "--json"
        )
        assert added.returncode == 0, added.stderr
        assert "s3cret-pw" not in added.stdout + added.stderr
        cells = cli_json(pg_url, "cell", "list")["cells"]
        mine = next(c for c in cells if c["name"] == name)
        assert mine["max_connections"] == 50 and mine["projects"] == 0
        assert "***" in mine["database_url"] and "s3cret-pw" not in str(cells)
        # the pool plan names the cell's own budget
        plan = cli_json(pg_url, "pool-plan", "--instances", "2")
        assert plan["cells"][name]["max_connections"] == 50
        assert plan["cells"][name]["instances"] == 2
        # the plans were copied: a project on the cell takes the free plan
        project = cli_json(
            pg_url, "project", "create", f"p-{name}", "--cell", name, "--plan", "starter"
        )
        assert project["cell"] == name and project["tier"] == "starter"
        with psycopg.connect(bare_database) as cell, psycopg.connect(pg_url) as control:
            assert cell.execute(
                "SELECT count(*) FROM gateway.projects WHERE id = %s", [project["id"]]
            ).fetchone() == (1,)
            assert control.execute(
                "SELECT cell FROM gateway.project_cells WHERE project_id = %s", [project["id"]]
            ).fetchone() == (name,)
        # commands that name the project find its cell
        got = cli_json(pg_url, "project", "get", project["name"])
        assert got["cell"] == name and got["id"] == project["id"]
        key = cli_json(pg_url, "key", "create", project["name"], "--type", "public")
        with psycopg.connect(pg_url) as control:
            assert control.execute(
                "SELECT project_id::text FROM gateway.key_cells WHERE key_hash = %s",
                [hash_key(key["key"])],
            ).fetchone() == (project["id"],)
        assert len(cli_json(pg_url, "key", "list", project["name"])["keys"]) == 1
        regenerated = cli_json(pg_url, "key", "regenerate", key["id"])
        with psycopg.connect(pg_url) as control:
            assert control.execute(
                "SELECT count(*) FROM gateway.key_cells WHERE key_hash = %s",
                [hash_key(regenerated["key"])],
            ).fetchone() == (1,)
        assert cli_json(pg_url, "key", "revoke", regenerated["id"])["status"] == "revoked"
        listed = cli_json(pg_url, "project", "list", "--cell", name)["projects"]
        assert [p["name"] for p in listed] == [project["name"]]
        assert listed[0]["cell"] == name
        # without --cell: every cell's projects, home's first, paged over the whole list
        home_total = cli_json(pg_url, "project", "list", "--cell", "home", "--limit", "1")
        everywhere = cli_json(pg_url, "project", "list", "--limit", "1")
        assert everywhere["total"] >= home_total["total"] + 1
        assert everywhere["projects"][0]["cell"] == "home" or home_total["total"] == 0
        rest = cli_json(
            pg_url, "project", "list", "--offset", str(home_total["total"]), "--limit", "100"
        )
        assert all(p["cell"] != "home" for p in rest["projects"])
        assert {"id": project["id"], "cell": name}.items() <= next(
            p for p in rest["projects"] if p["id"] == project["id"]
        ).items()
        # a name is unique across cells
        assert_refused(run_cli(pg_url, "project", "create", project["name"]), "already exists")
        cli_json(pg_url, "project", "delete", project["name"], "--confirm", project["name"])
        with psycopg.connect(pg_url) as control:
            assert control.execute(
                "SELECT count(*) FROM gateway.project_cells WHERE project_id = %s",
                [project["id"]],
            ).fetchone() == (0,)
        migrated = cli_json(pg_url, "migrate")
        assert name in migrated["cells"]
    finally:
        remove_cell(pg_url, name)


def test_cell_add_refuses_bad_input_in_one_line(pg_url: str) -> None:
    assert_refused(
        run_cli(pg_url, "cell", "add", "nowhere", "--url", "postgresql://u:pw@127.0.0.1:1/x"),
        "can't reach",
    )
    assert_refused(run_cli(pg_url, "cell", "add", "Bad Name", "--url", pg_url), "not valid")
    assert_refused(
        run_cli(pg_url, "project", "create", "x-" + unique_cell_name(), "--cell", "nope"), "no cell"
    )


def test_project_create_without_a_cell_takes_the_directorys_choice(
    pg_url: str, make_project: Any
) -> None:
    make_project()
    with connect(pg_url) as control:
        expected = directory.choose_cell(control)
    project = cli_json(pg_url, "project", "create", "e-" + unique_cell_name())
    assert project["cell"] == expected
