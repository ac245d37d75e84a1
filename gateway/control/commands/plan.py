"""``gateway plan list|set`` and ``gateway project usage``: plans (tiers), their limits,
and what a project used of them (``gateway/quotas``, docs/quotas.md).

The limit flags (``--requests-per-day N``, ``--db-size-bytes 2GB``, ``unlimited``) are
defined here once, for ``plan set`` and for ``project set-limits``.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.control.commands.common import CommandLine, UsageError, emit
from gateway.control.projects import find_project
from gateway.quotas import store
from gateway.quotas.plans import PLAN_FIELDS, LimitError, parse_limit


def add_limit_flags(p: argparse.ArgumentParser) -> None:
    """One flag per plan field: ``--requests-per-day N``, ``--db-size-bytes 2GB``, …"""
    for field in PLAN_FIELDS:
        p.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            metavar="N",
            help="a number (bytes: KB/MB/GB/TB), or unlimited",
        )


def limit_args(args: argparse.Namespace, *, allow_inherit: bool) -> dict[str, int | None]:
    """The limit flags given (as raw text) → plan field: value (-1 unlimited, None inherit)."""
    values: dict[str, int | None] = {}
    for field in PLAN_FIELDS:
        raw = getattr(args, field, None)
        if raw is None:
            continue
        try:
            values[field] = parse_limit(str(raw), field, allow_inherit=allow_inherit)
        except LimitError as exc:
            raise UsageError(str(exc)) from None
    return values


def _human_limit(field: str, value: Any) -> str:
    if value is None:
        return "unlimited"
    if field in ("bandwidth_bytes_monthly", "db_size_bytes"):
        return _human_bytes(int(value))
    return f"{value:,}"


def _human_bytes(n: int) -> str:
    for unit, size in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} B"


def cmd_list(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect() as conn:
        plans = store.list_plans(conn)
    header = ["plan", *PLAN_FIELDS, "projects"]
    rows = [
        [p["name"], *(_human_limit(f, p[f]) for f in PLAN_FIELDS), str(p["projects"])]
        for p in plans
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    )
    emit(args, {"plans": plans}, text)


def cmd_set(cli: CommandLine, args: argparse.Namespace) -> None:
    values = {k: v for k, v in limit_args(args, allow_inherit=False).items() if v is not None}
    if not values and not args.create:
        raise UsageError("nothing to change: give at least one limit, e.g. --requests-per-day")
    # plans are identical in every cell (admission reads them in the project's cell)
    for _cell, conn in cli.each_cell():
        plan = store.set_plan(conn, args.name, values, create=args.create)
        conn.commit()
    emit(
        args,
        plan,
        f"plan {plan['name']}: "
        + ", ".join(f"{k}={_human_limit(k, v)}" for k, v in plan.items() if k != "name"),
    )


def cmd_project_usage(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect_project(args.project) as conn:
        project = find_project(conn, args.project)
        report = store.usage(conn, project.id)
    head = f"{report['project']} ({report['plan']})"
    lines = [f"{head}, day {report['day']}, month {report['month']}"]
    for key, label in (
        ("requests_today", "requests today"),
        ("bandwidth_month", "bandwidth this month"),
        ("database_size", "database size"),
        ("job_runs_month", "job runs this month"),
    ):
        item = report[key]
        bytes_ = item.get("unit") == "bytes"
        used = item["used"]
        used_text = "unknown" if used is None else (_human_bytes(used) if bytes_ else f"{used:,}")
        limit = item["limit"]
        limit_text = (
            "unlimited" if limit is None else (_human_bytes(limit) if bytes_ else f"{limit:,}")
        )
        pct = "" if item["percent_used"] is None else f" ({item['percent_used']}%)"
        lines.append(f"  {label:<22} {used_text} of {limit_text}{pct}")
    lines.append(f"  {'job timeout at most':<22} {report['job_timeout_ms_max']:,} ms")
    emit(args, report, "\n".join(lines))


def register(cli: CommandLine, project_group: Any) -> None:
    """``project_group``: the ``gateway project`` group, which gets ``usage``."""
    group = cli.group("plan", "plans (tiers) and their limits")
    cli.command(group, "list", cmd_list, "list the plans and their limits")
    p = cli.command(group, "set", cmd_set, "change a plan's limits (every project on it)")
    p.add_argument("name")
    p.add_argument("--create", action="store_true", help="create it (from free's limits)")
    add_limit_flags(p)
    p = cli.command(
        project_group,
        "usage",
        cmd_project_usage,
        "requests today, bandwidth this month, database size, job runs: used, limit, %%",
    )
    p.add_argument("project")
