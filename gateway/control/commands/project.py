"""``gateway project create|set-limits|list|get|delete`` (``project usage`` is ``plan.py``'s)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cells import commands as cells
from gateway.cells import directory
from gateway.control import projects
from gateway.control.commands.common import (
    CommandLine,
    UsageError,
    emit,
    non_negative_int,
    positive_int,
)
from gateway.control.commands.plan import add_limit_flags, limit_args


def cmd_create(cli: CommandLine, args: argparse.Namespace) -> None:
    project, cell = cells.create_project(
        cli,
        args.name,
        args.cell,
        tier=args.tier,
        rate_limit_per_minute=args.rate_limit_per_minute,
        requests_per_day=args.requests_per_day,
    )
    payload = project.as_json()
    payload.pop("status")
    payload["cell"] = cell
    emit(
        args,
        payload,
        f"created project {project.name} ({project.id}), schema {project.schema_name}, cell {cell}",
    )


def cmd_set_limits(cli: CommandLine, args: argparse.Namespace) -> None:
    overrides = limit_args(args, allow_inherit=True)
    if not overrides and not args.status and not args.plan:
        raise UsageError(
            "nothing to change: give --plan, a limit (--rate-limit-per-minute, "
            "--requests-per-day, --bandwidth-bytes-monthly, --db-size-bytes, "
            "--job-runs-monthly, --realtime-streams) or --status"
        )
    with cli.connect_project(args.project) as conn:
        project = projects.set_limits(
            conn, args.project, status=args.status, plan=args.plan, overrides=overrides
        )
    requests = project.requests_limit_daily
    emit(
        args,
        project.as_json(),
        f"{project.name} ({project.tier}): {project.rate_limit_per_minute}/minute, "
        f"{'unlimited' if requests is None else requests}/day, {project.status}",
    )


def cmd_list(cli: CommandLine, args: argparse.Namespace) -> None:
    if args.cell is None:
        with cli.connect() as control:
            page = directory.list_every_cell(control, limit=args.limit, offset=args.offset)
    else:
        settings = cli.settings()
        with cli.connect() as control:
            cell = directory.get_cell(control, args.cell)
            if cell.is_home:
                page = projects.list_projects(control, limit=args.limit, offset=args.offset)
            else:
                with directory.connect_cell(settings, cell) as conn:
                    page = projects.list_projects(conn, limit=args.limit, offset=args.offset)
        page["projects"] = [{**p, "cell": cell.name} for p in page["projects"]]
    lines = [
        f"{p['name']}\t{p['id']}\t{p['tier']}\t{p['status']}\t{p['cell']}" for p in page["projects"]
    ]
    lines.append(f"({len(page['projects'])} of {page['total']})")
    emit(args, page, "\n".join(lines))


def cmd_get(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect() as control:
        cell = directory.locate(control, args.project).cell
    with cli.connect_project(args.project) as conn:
        project = {**projects.get_project(conn, args.project), "cell": cell}
    emit(args, project, "\n".join(f"{k}: {v}" for k, v in project.items()))


def cmd_delete(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect_project(args.project) as conn:
        result = projects.delete_project(conn, args.project, confirm=args.confirm)
    with cli.connect() as control:  # its directory rows (none for home's projects)
        directory.unregister_project(control, result["id"])
        control.commit()
    emit(args, result, f"deleted project {result['name']} ({result['id']})")


def register(cli: CommandLine) -> Any:
    """Returns the group, for the commands of other concerns about a project (usage)."""
    group = cli.group("project", "projects")
    p = cli.command(group, "create", cmd_create, "create a project")
    p.add_argument("name")
    p.add_argument("--plan", "--tier", dest="tier", default="free", help="its plan (tier)")
    p.add_argument("--rate-limit-per-minute", type=non_negative_int)
    p.add_argument("--requests-per-day", type=non_negative_int)
    p.add_argument("--cell", help="the cell to place it on (default: the one with fewest projects)")
    p = cli.command(group, "set-limits", cmd_set_limits, "change a project's limits")
    p.add_argument("project")
    # quotas: every limit is an override of the plan's (N, unlimited, or plan = inherit)
    add_limit_flags(p)
    p.add_argument("--status", choices=("active", "suspended"))
    p.add_argument("--plan", "--tier", dest="plan", help="move the project to this plan")
    p = cli.command(group, "list", cmd_list, "list the projects of every cell (or one), paged")
    p.add_argument("--cell", help="only this cell's projects (default: every cell's)")
    p.add_argument("--limit", type=positive_int, default=20)
    p.add_argument("--offset", type=non_negative_int, default=0)
    p = cli.command(group, "get", cmd_get, "show a project, its tables and key count")
    p.add_argument("project")
    p = cli.command(group, "delete", cmd_delete, "delete a project: its schema, tables, role, keys")
    p.add_argument("project")
    p.add_argument("--confirm", required=True, metavar="NAME", help="the project's name again")
    return group
