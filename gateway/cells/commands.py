"""``gateway cell add|list``, and placing a new project on a cell (``project create --cell``).

A cell is a full gateway database: ``cell add`` migrates it to head on its direct URL,
copies the control database's plans into it (admission reads a project's plan in the
project's own cell; ``plan set`` then changes every cell), and records it. URLs are
shown with their passwords redacted.
"""

from __future__ import annotations

import argparse
from typing import Any

import psycopg

from gateway.cells import directory
from gateway.cells.move import move_project
from gateway.control import projects
from gateway.control.commands.common import CommandLine, UsageError, emit, positive_int
from gateway.control.errors import ConflictError
from gateway.db import migrate

PLANS_COPY_SQL = "SELECT * FROM gateway.plans ORDER BY name"


def copy_plans(source: psycopg.Connection[Any], target: psycopg.Connection[Any]) -> int:
    """Make ``target``'s plans equal ``source``'s (insert or update by name)."""
    rows = source.execute(PLANS_COPY_SQL).fetchall()
    for row in rows:
        columns = list(row)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != "name")
        target.execute(
            f"INSERT INTO gateway.plans ({', '.join(columns)})"
            f" VALUES ({', '.join(['%s'] * len(columns))})"
            f" ON CONFLICT (name) DO UPDATE SET {updates}",
            [row[c] for c in columns],
        )
    target.commit()
    return len(rows)


def cmd_add(cli: CommandLine, args: argparse.Namespace) -> None:
    if not directory.CELL_NAME_RE.match(args.name) or args.name == directory.HOME:
        raise UsageError(
            f"cell name {args.name!r} is not valid (a lowercase letter, then up to 31 of "
            "a-z 0-9 _ -; not 'home')"
        )
    direct = args.direct_url or args.url
    shown = directory.redact_url(direct)
    try:
        with psycopg.connect(direct, connect_timeout=5):
            pass
    except psycopg.OperationalError:
        raise UsageError(f"can't reach the cell's database at {shown}") from None
    with cli.connect() as control:
        if control.execute("SELECT 1 FROM gateway.cells WHERE name = %s", [args.name]).fetchone():
            raise ConflictError(f"a cell named {args.name!r} already exists", field="name")
    migrate.upgrade(direct)
    with cli.connect() as control:
        with projects.connect(direct) as target:
            plans = copy_plans(control, target)
        cell = directory.add_cell(
            control,
            args.name,
            args.url,
            direct_url=args.direct_url,
            max_connections=args.max_connections,
        )
        control.commit()
    payload = {**cell.as_json(), "plans_copied": plans}
    emit(args, payload, f"added cell {cell.name} ({shown}), migrated to head")


def cmd_list(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect() as control:
        cells = directory.list_cells(control)
    payload = {"cells": [c.as_json() for c in cells]}
    lines = [
        f"{c.name}\t{c.status}\t{c.projects} project(s)\t"
        f"{directory.redact_url(c.database_url) or '(control database)'}"
        for c in cells
    ]
    emit(args, payload, "\n".join(lines))


def create_project(
    cli: CommandLine, name: str, cell_name: str | None, **options: Any
) -> tuple[projects.Project, str]:
    """Create a project on ``cell_name`` (default: ``directory.choose_cell``) and record
    it in the directory; a failure in between removes what was made."""
    settings = cli.settings()
    with cli.connect() as control:
        chosen = cell_name or directory.choose_cell(control)
        cell = directory.get_cell(control, chosen)
        # names are unique across every cell (the directory knows those off home)
        if directory.name_taken(control, name):
            raise ConflictError(f"a project named {name!r} already exists", field="name")
        if cell.is_home:
            return projects.create_project(control, name, **options), cell.name
        with directory.connect_cell(settings, cell) as conn:
            project = projects.create_project(conn, name, **options)
        try:
            directory.register_project(control, project.id, project.name, cell.name, [])
            control.commit()
        except Exception:
            with directory.connect_cell(settings, cell) as conn:
                projects.delete_project(conn, project.id, confirm=project.name)
            raise
    return project, cell.name


def cmd_move(cli: CommandLine, args: argparse.Namespace) -> None:
    report = move_project(cli.settings(), args.project, args.to, abort=args.abort)
    freeze = "" if report.freeze_ms is None else f", writes frozen {report.freeze_ms} ms"
    emit(
        args,
        report.as_json(),
        f"project {report.name}: {report.source} -> {report.target}: {report.state}{freeze}",
    )


def register_move(cli: CommandLine, project_group: Any) -> None:
    """``gateway project move PROJECT --to CELL [--abort]`` (docs/cells.md)."""
    p = cli.command(
        project_group, "move", cmd_move, "move a project to another cell while it serves"
    )
    p.add_argument("project")
    p.add_argument("--to", required=True, metavar="CELL", help="the target cell")
    p.add_argument("--abort", action="store_true", help="roll back a move that has not switched")


def register(cli: CommandLine) -> None:
    group = cli.group("cell", "cells: the PostgreSQL databases projects are placed on")
    p = cli.command(group, "add", cmd_add, "migrate a database to head and add it as a cell")
    p.add_argument("name")
    p.add_argument("--url", required=True, help="the pooled URL requests use")
    p.add_argument("--direct-url", help="the direct URL (LISTEN, migrations); default --url")
    p.add_argument("--max-connections", type=positive_int, metavar="M", help="its budget")
    cli.command(group, "list", cmd_list, "list the cells and their number of projects")
