"""The ``gateway`` command: migrations, serving, and provisioning projects, keys and tables.

Every command takes ``--json`` and then prints exactly one JSON object on stdout. Bad
input is one line on stderr and exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson
import psycopg

from gateway.control.provisioning import ProvisioningError
from gateway.control.tabledef import DefinitionError
from gateway.db.budget import PlanError
from gateway.settings import Settings, SettingsError

EXIT_USAGE = 2


class UsageError(Exception):
    """Refused input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _settings() -> Settings:
    settings = Settings.from_env()
    settings.require_database()
    return settings


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: str) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(payload, default=str).decode() + "\n")
    else:
        print(human)


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, not {value}")
    return number


# --- commands ---------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> None:
    from gateway.db import migrate

    settings = _settings()
    migrate.upgrade(settings.direct_url)
    _emit(args, {"status": "ok", "revision": "head"}, "migrated to head")


def _positive_int(value: str) -> int:
    number = _non_negative_int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, not {value}")
    return number


def cmd_serve(args: argparse.Namespace) -> None:
    import asyncio
    import os

    import uvicorn

    from gateway.db.pool import plan_for

    settings = _settings()  # fail fast, with the variable's name, before uvicorn starts
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
    asyncio.run(plan_for(settings))
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
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def cmd_dev(args: argparse.Namespace) -> None:
    from gateway.control import devserver

    devserver.run(host=args.host, port=args.port, data_root=Path(args.data))


def _connect() -> psycopg.Connection[Any]:
    from gateway.control.provisioning import connect

    return connect(_settings().direct_url)


def cmd_pool_plan(args: argparse.Namespace) -> None:
    import asyncio

    from gateway.db import budget, pool

    settings = Settings.from_env()
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
    from gateway.jobs.worker import db_connections

    payload = plan.as_json()
    workers = db_connections(settings, plan.pool_max)
    payload["jobs_worker_connections"] = workers
    _emit(
        args,
        payload,
        plan.summary() + f"; of each pool, the jobs worker and cron hold at most {workers} "
        f"(GATEWAY_JOBS_CONCURRENCY={settings.jobs_concurrency} deliveries hold none)",
    )


def cmd_project_create(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    with _connect() as conn:
        project = provisioning.create_project(
            conn,
            args.name,
            tier=args.tier,
            rate_limit_per_minute=args.rate_limit_per_minute,
            requests_per_day=args.requests_per_day,
        )
    payload = project.as_json()
    payload.pop("status")
    _emit(
        args,
        payload,
        f"created project {project.name} ({project.id}), schema {project.schema_name}",
    )


def cmd_project_set_limits(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    overrides = _limit_args(args, allow_inherit=True)
    if not overrides and not args.status and not args.plan:
        raise UsageError(
            "nothing to change: give --plan, a limit (--rate-limit-per-minute, "
            "--requests-per-day, --bandwidth-bytes-monthly, --db-size-bytes, "
            "--job-runs-monthly, --realtime-streams) or --status"
        )
    with _connect() as conn:
        project = provisioning.set_limits(
            conn, args.project, status=args.status, plan=args.plan, overrides=overrides
        )
    requests = project.requests_limit_daily
    _emit(
        args,
        project.as_json(),
        f"{project.name} ({project.tier}): {project.rate_limit_per_minute}/minute, "
        f"{'unlimited' if requests is None else requests}/day, {project.status}",
    )


def cmd_project_list(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    with _connect() as conn:
        page = provisioning.list_projects(conn, limit=args.limit, offset=args.offset)
    lines = [f"{p['name']}\t{p['id']}\t{p['tier']}\t{p['status']}" for p in page["projects"]]
    lines.append(f"({len(page['projects'])} of {page['total']})")
    _emit(args, page, "\n".join(lines))


def cmd_project_get(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    with _connect() as conn:
        project = provisioning.get_project(conn, args.project)
    _emit(args, project, "\n".join(f"{k}: {v}" for k, v in project.items()))


def cmd_project_delete(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    with _connect() as conn:
        result = provisioning.delete_project(conn, args.project, confirm=args.confirm)
    _emit(args, result, f"deleted project {result['name']} ({result['id']})")


def cmd_key_create(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    scopes = [s.strip() for s in args.scopes.split(",")] if args.scopes else None
    with _connect() as conn:
        key = provisioning.create_key(
            conn, args.project, key_type=args.type, scopes=scopes, expires_in_s=args.expires_in
        )
    _emit(args, key, f"{key['type']} key {key['id']}: {key['key']}")


def cmd_key_revoke(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    with _connect() as conn:
        result = provisioning.revoke_key(conn, args.key_id)
    _emit(args, result, f"key {result['id']} revoked")


def cmd_key_list(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    with _connect() as conn:
        result = provisioning.list_keys(conn, args.project)
    lines = [f"{k['id']}\t{k['prefix']}…\t{k['type']}\t{k['status']}" for k in result["keys"]]
    _emit(args, result, "\n".join(lines) or "no keys")


def cmd_key_regenerate(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    with _connect() as conn:
        key = provisioning.regenerate_key(conn, args.key_id)
    _emit(args, key, f"{key['type']} key {key['id']} replaces {key['replaces']}: {key['key']}")


def cmd_admin_sign(args: argparse.Namespace) -> None:
    """Headers for one signed admin request; the body must be sent byte for byte."""
    from gateway.control import signing

    settings = Settings.from_env()
    if not settings.admin_hmac_secrets:
        raise UsageError("GATEWAY_ADMIN_HMAC_SECRET is not set: it holds the signing secret")
    if args.body is not None and args.body_file is not None:
        raise UsageError("give --body or --body-file, not both")
    body = args.body.encode() if args.body is not None else b""
    if args.body_file is not None:
        try:
            body = Path(args.body_file).read_bytes()
        except OSError as exc:
            raise UsageError(f"can't read {args.body_file}: {exc.strerror}") from None
    headers = signing.sign_request(settings.admin_hmac_secrets[0], args.method, args.path, body)
    _emit(args, headers, " ".join(f"-H {name}:{value}" for name, value in headers.items()))


def cmd_table_create(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    try:
        raw = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise UsageError(f"can't read {args.file}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{args.file} is not valid JSON: {exc}") from None
    with _connect() as conn:
        result = provisioning.create_table_from_definition(conn, args.project, raw)
    _emit(args, result, f"created table {result['table']} in {result['schema_name']}")


def cmd_table_realtime(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    if args.enable == args.disable:
        raise UsageError("give exactly one of --enable or --disable")
    with _connect() as conn:
        result = provisioning.set_realtime(conn, args.project, args.table, enabled=args.enable)
    state = "enabled" if result["realtime"] else "disabled"
    _emit(args, result, f"realtime {state} for {result['table']}")


def _default_value(raw: str | None) -> tuple[bool, Any]:
    """``--default``: a JSON literal, or now() / gen_random_uuid()."""
    if raw is None:
        return False, None
    if raw.strip().lower() in ("now()", "gen_random_uuid()"):
        return True, raw.strip().lower()
    try:
        return True, json.loads(raw)
    except ValueError:
        raise UsageError(
            f"--default {raw!r} is not a JSON literal (strings need quotes: '\"text\"'), "
            "now() or gen_random_uuid()"
        ) from None


def cmd_table_add_column(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    has_default, default = _default_value(args.default)
    raw: dict[str, Any] = {
        "name": args.name,
        "type": args.type,
        "nullable": args.nullable,
        "sensitive": args.sensitive,
        "client_read": args.client_read,
        "client_write": args.client_write,
    }
    if has_default:
        raw["default"] = default
    with _connect() as conn:
        result = provisioning.add_column_from_definition(conn, args.project, args.table, raw)
    column = result["column"]
    _emit(
        args,
        result,
        f"added column {column['name']} {column['type']} to {args.table} "
        f"in {result['schema_name']}",
    )


def cmd_table_set_access(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    rows = args.row_access is not None or args.owner_column is not None
    flags_given = (args.client_read, args.client_write, args.sensitive) != (None, None, None)
    if rows:
        # rows that belong to users (docs/auth.md)
        if args.column is not None:
            raise UsageError("--row-access and --owner-column are table settings: no --column")
        with _connect() as conn:
            result = provisioning.set_row_access(
                conn,
                args.project,
                args.table,
                row_access=args.row_access,
                owner_column=args.owner_column,
            )
        if not flags_given:
            message = f"{args.table}: row_access={result['row_access']}"
            _emit(args, result, message + f", owner_column={result['owner_column']}")
            return
    with _connect() as conn:
        result = provisioning.set_access(
            conn,
            args.project,
            args.table,
            column=args.column,
            client_read=args.client_read,
            client_write=args.client_write,
            sensitive=args.sensitive,
        )
    target = args.table if args.column is None else f"{args.table}.{args.column}"
    flags = ", ".join(f"{k}={str(v).lower()}" for k, v in result.items() if isinstance(v, bool))
    _emit(args, result, f"{target}: {flags}")


def cmd_table_drop(args: argparse.Namespace) -> None:
    from gateway.control import provisioning

    with _connect() as conn:
        result = provisioning.drop_table(conn, args.project, args.table)
    _emit(args, result, f"dropped table {args.table} from {result['schema_name']}")


def cmd_stats(args: argparse.Namespace) -> None:
    from gateway.ops import stats

    try:
        since = stats.parse_since(args.since)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with _connect() as conn:
        report = stats.collect(conn, since)
    report = {"since": args.since, **report}
    _emit(args, report, stats.render_text(report, args.since))


# --- quotas: plans and usage (gateway/quotas, docs/quotas.md) -----------------------------


def _limit_args(args: argparse.Namespace, *, allow_inherit: bool) -> dict[str, int | None]:
    """The limit flags given (as raw text) → plan field: value (-1 unlimited, None inherit)."""
    from gateway.quotas.plans import PLAN_FIELDS, LimitError, parse_limit

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


def cmd_plan_list(args: argparse.Namespace) -> None:
    from gateway.quotas import store
    from gateway.quotas.plans import PLAN_FIELDS

    with _connect() as conn:
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
    _emit(args, {"plans": plans}, text)


def cmd_plan_set(args: argparse.Namespace) -> None:
    from gateway.quotas import store

    values = {k: v for k, v in _limit_args(args, allow_inherit=False).items() if v is not None}
    if not values and not args.create:
        raise UsageError("nothing to change: give at least one limit, e.g. --requests-per-day")
    with _connect() as conn:
        plan = store.set_plan(conn, args.name, values, create=args.create)
    _emit(
        args,
        plan,
        f"plan {plan['name']}: "
        + ", ".join(f"{k}={_human_limit(k, v)}" for k, v in plan.items() if k != "name"),
    )


def cmd_project_usage(args: argparse.Namespace) -> None:
    from gateway.control import provisioning
    from gateway.quotas import store

    with _connect() as conn:
        project = provisioning.find_project(conn, args.project)
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
    _emit(args, report, "\n".join(lines))


def _add_limit_flags(p: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    from gateway.quotas.plans import PLAN_FIELDS

    for field in PLAN_FIELDS:
        if field in skip:
            continue
        p.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            metavar="N",
            help="a number (bytes: KB/MB/GB/TB), or unlimited",
        )


def _add_quota_commands(sub: Any, project: Any, command: Callable[..., Any]) -> None:
    plan = sub.add_parser("plan", help="plans (tiers) and their limits").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    command(plan, "list", cmd_plan_list, "list the plans and their limits")
    p = command(plan, "set", cmd_plan_set, "change a plan's limits (every project on it)")
    p.add_argument("name")
    p.add_argument("--create", action="store_true", help="create it (from free's limits)")
    _add_limit_flags(p)
    p = command(
        project,
        "usage",
        cmd_project_usage,
        "requests today, bandwidth this month, database size, job runs: used, limit, %%",
    )
    p.add_argument("project")


# --- background jobs ----------------------------------------------------------------------


def _jobs_error(exc: Exception) -> UsageError:
    return UsageError(str(exc))


def cmd_jobs_set_endpoint(args: argparse.Namespace) -> None:
    from gateway.jobs import commands

    settings = _settings()
    try:
        with _connect() as conn:
            result = commands.set_endpoint(conn, settings, args.project, args.url)
    except commands.JobsCommandError as exc:
        raise _jobs_error(exc) from None
    _emit(
        args,
        result,
        f"{result['project']}: jobs are delivered to {result['url']}\n"
        f"signing secret (shown once, keep it): {result['signing_secret']}",
    )


def cmd_jobs_set_quota(args: argparse.Namespace) -> None:
    from gateway.jobs import commands

    limit = None if args.monthly_runs == "default" else _non_negative_int(args.monthly_runs)
    with _connect() as conn:
        result = commands.set_quota(conn, args.project, limit)
    runs = result["monthly_runs"]
    _emit(
        args,
        result,
        f"{result['project']}: {runs if runs is not None else 'unlimited'} job runs/month",
    )


def cmd_jobs_stats(args: argparse.Namespace) -> None:
    from gateway.jobs import commands

    with _connect() as conn:
        report = commands.stats(conn)
    _emit(args, report, commands.render_stats(report))


def cmd_worker(args: argparse.Namespace) -> None:
    import asyncio
    import logging

    from gateway.jobs import commands

    settings = _settings()
    if settings.jobs_concurrency < 1:
        raise UsageError("GATEWAY_JOBS_CONCURRENCY is 0: a worker without workers would idle")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(commands.run_worker(settings))


def _add_jobs_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    command(sub, "worker", cmd_worker, "run job delivery workers and the cron tick (no HTTP)")
    jobs = sub.add_parser("jobs", help="background jobs").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    p = command(jobs, "set-endpoint", cmd_jobs_set_endpoint, "where a project's jobs are delivered")
    p.add_argument("project")
    p.add_argument("url")
    p = command(jobs, "set-quota", cmd_jobs_set_quota, "override a project's monthly job runs")
    p.add_argument("project")
    p.add_argument("monthly_runs", metavar="N|default")
    command(jobs, "stats", cmd_jobs_stats, "queue depth, oldest pending job, runs this month")


# --- the parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gateway", description="Easy Mode Gateway")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(
        group: Any, name: str, handler: Callable[[argparse.Namespace], None], help_text: str
    ) -> argparse.ArgumentParser:
        p = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    command(sub, "migrate", cmd_migrate, "apply the migrations (uses DATABASE_DIRECT_URL)")

    p = command(sub, "serve", cmd_serve, "serve the API with uvicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)

    p = command(sub, "dev", cmd_dev, "local database, migrations, demo project, server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--data", default=".pgdata", help="where the local database lives")

    p = command(
        sub,
        "pool-plan",
        cmd_pool_plan,
        "print the per-instance connection pool plan against the database's budget",
    )
    p.add_argument("--instances", type=_positive_int, help="default: GATEWAY_INSTANCES")
    p.add_argument("--max-connections", type=_positive_int, metavar="M")
    p.add_argument("--reserved", type=_non_negative_int, metavar="R")
    p.add_argument("--neon-cu", metavar="CU", help="0.25, 0.5, 1, 2, … (Neon's table)")

    p = command(sub, "stats", cmd_stats, "request-log statistics: instances, projects, latency")
    p.add_argument("--since", default="1h", help="how far back: 30m, 1h, 2d (default 1h)")

    project = sub.add_parser("project", help="projects").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    p = command(project, "create", cmd_project_create, "create a project")
    p.add_argument("name")
    p.add_argument("--plan", "--tier", dest="tier", default="free", help="its plan (tier)")
    p.add_argument("--rate-limit-per-minute", type=_non_negative_int)
    p.add_argument("--requests-per-day", type=_non_negative_int)
    p = command(project, "set-limits", cmd_project_set_limits, "change a project's limits")
    p.add_argument("project")
    # quotas: every limit is an override of the plan's (N, unlimited, or plan = inherit)
    _add_limit_flags(p)
    p.add_argument("--status", choices=("active", "suspended"))
    p.add_argument("--plan", "--tier", dest="plan", help="move the project to this plan")
    p = command(project, "list", cmd_project_list, "list projects, oldest first (paged)")
    p.add_argument("--limit", type=_positive_int, default=20)
    p.add_argument("--offset", type=_non_negative_int, default=0)
    p = command(project, "get", cmd_project_get, "show a project, its tables and key count")
    p.add_argument("project")
    p = command(
        project, "delete", cmd_project_delete, "delete a project: its schema, tables, role, keys"
    )
    p.add_argument("project")
    p.add_argument("--confirm", required=True, metavar="NAME", help="the project's name again")

    key = sub.add_parser("key", help="API keys").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    _add_quota_commands(sub, project, command)

    p = command(key, "create", cmd_key_create, "create an API key")
    p.add_argument("project")
    p.add_argument("--type", required=True, choices=("public", "server"))
    p.add_argument("--scopes")
    p.add_argument("--expires-in", type=_non_negative_int, metavar="SECONDS")
    p = command(key, "revoke", cmd_key_revoke, "revoke an API key")
    p.add_argument("key_id")
    p = command(key, "list", cmd_key_list, "list a project's keys (never the secrets)")
    p.add_argument("project")
    p = command(key, "regenerate", cmd_key_regenerate, "revoke a key and issue its replacement")
    p.add_argument("key_id")

    admin = sub.add_parser("admin", help="the admin API").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    p = command(
        admin,
        "sign",
        cmd_admin_sign,
        "print the headers that sign one admin request (secret: GATEWAY_ADMIN_HMAC_SECRET)",
    )
    p.add_argument("method", type=str.upper)
    p.add_argument("path", help="the path and query as sent: /v1/admin/projects?limit=5")
    p.add_argument("--body", help="the exact request body")
    p.add_argument("--body-file", help="read the exact request body from this file")

    table = sub.add_parser("table", help="project tables").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    p = command(table, "create", cmd_table_create, "create a table from a JSON definition")
    p.add_argument("project")
    p.add_argument("--file", required=True)
    p = command(
        table,
        "realtime",
        cmd_table_realtime,
        "turn realtime capture (the change-log trigger) on or off for a table",
    )
    p.add_argument("project")
    p.add_argument("table")
    p.add_argument("--enable", action="store_true")
    p.add_argument("--disable", action="store_true")

    p = command(table, "add-column", cmd_table_add_column, "add a column to a table")
    p.add_argument("project")
    p.add_argument("table")
    p.add_argument("--name", required=True)
    p.add_argument("--type", required=True)
    p.add_argument("--nullable", action="store_true", help="allow NULL (default: NOT NULL)")
    p.add_argument("--default", help="a JSON literal, now() or gen_random_uuid()")
    p.add_argument("--sensitive", action="store_true", help="never shown to public keys")
    p.add_argument("--client-read", type=_bool, default=True, metavar="true|false")
    p.add_argument("--client-write", type=_bool, default=True, metavar="true|false")

    p = command(
        table, "set-access", cmd_table_set_access, "change a table's or a column's access flags"
    )
    p.add_argument("project")
    p.add_argument("table")
    p.add_argument("--column", help="change this column's flags instead of the table's")
    p.add_argument("--client-read", type=_bool, metavar="true|false")
    p.add_argument("--client-write", type=_bool, metavar="true|false")
    p.add_argument("--sensitive", type=_bool, metavar="true|false", help="needs --column")
    p.add_argument(
        "--row-access",
        choices=("all", "owner", "public_read"),
        help="what public keys may do with rows: all, only their session user's (owner), "
        "or read all and write their own (public_read)",
    )
    p.add_argument("--owner-column", help="the uuid column holding a row's user id")

    p = command(table, "drop", cmd_table_drop, "drop a table and unregister it")
    p.add_argument("project")
    p.add_argument("table")

    # end-user auth: gateway auth users|logout|force-reset|import (gateway/auth/cli.py)
    from gateway.auth import cli as auth_cli

    auth_cli.register(sub, command, connect=_connect, emit=_emit, parser_class=_Parser)
    _add_jobs_commands(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (UsageError, ProvisioningError, DefinitionError, SettingsError, PlanError) as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
        print(f"gateway: error: can't reach the database: {first_line}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
