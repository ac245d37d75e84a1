"""Running the gateway: ``gateway migrate|serve|dev|pool-plan|stats``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import uvicorn

from gateway.cells import directory
from gateway.cells.runtime import cell_plan
from gateway.control import devserver
from gateway.control.commands.common import (
    CommandLine,
    UsageError,
    emit,
    non_negative_int,
    positive_int,
)
from gateway.control.projects import connect
from gateway.db import budget, migrate, pool
from gateway.db.localdb import DEFAULT_DATA_ROOT, find_local_database
from gateway.http.protocol import OneSendHttpToolsProtocol
from gateway.jobs.worker import db_connections
from gateway.ops import stats
from gateway.settings import Settings


def cmd_migrate(cli: CommandLine, args: argparse.Namespace) -> None:
    settings = cli.settings()
    migrate.upgrade(settings.direct_url)
    # then every other cell (a cell is a full gateway database: the same head)
    with cli.connect() as control:
        others = [c for c in directory.list_cells(control) if not c.is_home]
    for cell in others:
        migrate.upgrade(cell.direct(settings))
    payload = {"status": "ok", "revision": "head", "cells": ["home", *(c.name for c in others)]}
    emit(args, payload, f"migrated to head: {', '.join(payload['cells'])}")


def cmd_serve(cli: CommandLine, args: argparse.Namespace) -> None:
    # fail fast, with the variable's name, before uvicorn starts; the production defaults
    # even on the local database of `make run` (its development defaults are `gateway dev`'s)
    settings = cli.settings(development=False)
    if args.workers > settings.instances:
        # every worker process is an instance with its own pool
        print(
            f"gateway: note: {args.workers} workers are {args.workers} instances: "
            f"planning the pools with GATEWAY_INSTANCES={args.workers}",
            file=sys.stderr,
        )
        os.environ["GATEWAY_INSTANCES"] = str(args.workers)
        settings = settings.with_changes(instances=args.workers)
    # an impossible connection plan stops here with one line (PlanError), not a traceback
    asyncio.run(pool.plan_for(settings))
    uvicorn.run(
        "gateway.http.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        # the gateway reads X-Forwarded-For itself, only from GATEWAY_TRUSTED_PROXIES
        # (uvicorn would otherwise rewrite the peer address for any local proxy)
        proxy_headers=False,
        # no "server: uvicorn" on every answer: it tells a prober what to look for, and
        # it is one more header to validate and write per response
        server_header=False,
        # an answer's head and body in one socket send (gateway/http/protocol.py)
        http=OneSendHttpToolsProtocol,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def cmd_pool_plan(cli: CommandLine, args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    asks_the_database = args.neon_cu is None and args.max_connections is None
    no_url = not settings.database_url and not settings.database_direct_url
    if asks_the_database and no_url and find_local_database() is not None:
        settings = cli.settings()  # the local database of `make run`
    if args.instances is not None:
        settings = settings.with_changes(instances=args.instances)
    if args.neon_cu is not None and args.max_connections is not None:
        raise UsageError("give --max-connections or --neon-cu, not both")
    if args.neon_cu is not None:
        max_connections, reserved = budget.neon_limits(args.neon_cu)
        if args.reserved is not None:
            reserved = args.reserved
        source = f"Neon {args.neon_cu} CU"
    elif args.max_connections is not None:
        max_connections = args.max_connections
        reserved = args.reserved
        if reserved is None:
            reserved = settings.db_reserved_connections
        if reserved is None:
            reserved = 3  # PostgreSQL's default superuser_reserved_connections
        source = "--max-connections"
    else:
        if not settings.database_url and not settings.database_direct_url:
            raise UsageError(
                "give --max-connections or --neon-cu, or set DATABASE_DIRECT_URL/DATABASE_URL "
                "to ask the database"
            )
        if args.reserved is not None:
            settings = settings.with_changes(db_reserved_connections=args.reserved)
        max_connections, reserved, source = asyncio.run(pool.discover_limits(settings, timeout=0))
    plan = budget.plan_pool(settings, max_connections, reserved, source=source)
    payload = plan.as_json()
    workers = db_connections(settings, plan.pool_max)
    payload["jobs_worker_connections"] = workers
    human = (
        plan.summary() + f"; of each pool, the jobs worker and cron hold at most {workers} "
        f"(GATEWAY_JOBS_CONCURRENCY={settings.jobs_concurrency} deliveries hold none)"
    )
    if asks_the_database:
        # every other cell: its own pool per instance, from its own budget
        others = asyncio.run(_cell_plans(settings))
        payload["cells"] = {name: p.as_json() for name, p in others.items()}
        human += "".join(f"\ncell {name}: {p.summary()}" for name, p in others.items())
    emit(args, payload, human)


async def _cell_plans(settings: Settings) -> dict[str, budget.PoolPlan]:
    with connect(settings.direct_url) as control:
        cells = [c for c in directory.list_cells(control) if not c.is_home]
    return {cell.name: await cell_plan(cell, cell.settings(settings)) for cell in cells}


def cmd_stats(cli: CommandLine, args: argparse.Namespace) -> None:
    try:
        since = stats.parse_since(args.since)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings = cli.settings()
    with cli.connect() as control:
        cell = directory.get_cell(control, args.cell)
    # each cell keeps its own projects' request log (docs/cells.md)
    with directory.connect_cell(settings, cell) as conn:
        report = stats.collect(conn, since)
    report = {"since": args.since, **report}
    emit(args, report, stats.render_text(report, args.since))


def register(cli: CommandLine) -> None:
    """Nothing below the HTTP layer imports the app: ``gateway serve`` and ``gateway dev``
    name their factories to uvicorn."""
    top = cli.subcommands

    def cmd_dev(cli: CommandLine, args: argparse.Namespace) -> None:
        devserver.run(host=args.host, port=args.port, data_root=Path(args.data))

    cli.command(top, "migrate", cmd_migrate, "apply the migrations (uses DATABASE_DIRECT_URL)")

    p = cli.command(top, "serve", cmd_serve, "serve the API with uvicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)

    p = cli.command(top, "dev", cmd_dev, "local database, migrations, demo project, server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--data", default=str(DEFAULT_DATA_ROOT), help="where the local database lives")

    p = cli.command(
        top,
        "pool-plan",
        cmd_pool_plan,
        "print the per-instance connection pool plan against the database's budget",
    )
    p.add_argument("--instances", type=positive_int, help="default: GATEWAY_INSTANCES")
    p.add_argument("--max-connections", type=positive_int, metavar="M")
    p.add_argument("--reserved", type=non_negative_int, metavar="R")
    p.add_argument("--neon-cu", metavar="CU", help="0.25, 0.5, 1, 2, … (Neon's table)")

    p = cli.command(top, "stats", cmd_stats, "request-log statistics: instances, projects, latency")
    p.add_argument("--since", default="1h", help="how far back: 30m, 1h, 2d (default 1h)")
    p.add_argument("--cell", default="home", help="whose projects' request log (default home)")
