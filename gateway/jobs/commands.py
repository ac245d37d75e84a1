"""The ``gateway jobs …`` and ``gateway worker`` commands: what they do, and ``register``,
which adds them to the ``gateway`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.control.commands.common import CommandLine, UsageError, emit, non_negative_int
from gateway.control.projects import find_project
from gateway.db.pool import create_pool, plan_for
from gateway.jobs import signing, ssrf
from gateway.jobs.worker import CHANNEL, JobsRuntime
from gateway.metadata.listener import MetadataListener
from gateway.ops.maintenance import Maintenance
from gateway.settings import Settings

logger = logging.getLogger("gateway.jobs")


class JobsCommandError(ValueError):
    """Refused input for a jobs command; one line for the operator."""


def _project_id(conn: psycopg.Connection[Any], ref: str) -> tuple[str, str]:
    project = find_project(conn, ref)
    return str(project.id), project.name


def set_endpoint(
    conn: psycopg.Connection[Any], settings: Settings, ref: str, url: str
) -> dict[str, Any]:
    """Check the URL against the SSRF rules (now; again at every delivery), store it with a
    fresh signing secret, and return the secret — the only time it is shown."""
    try:
        _target, address = asyncio.run(ssrf.check_url(url, settings.jobs_allow_private_targets))
    except ssrf.TargetRefused as exc:
        raise JobsCommandError(f"endpoint refused: {exc}") from None
    project_id, name = _project_id(conn, ref)
    secret = signing.new_secret()
    conn.execute(
        """
        INSERT INTO gateway.job_projects (project_id, endpoint_url, signing_secret)
        VALUES (%s, %s, %s)
        ON CONFLICT (project_id) DO UPDATE
           SET endpoint_url = excluded.endpoint_url, signing_secret = excluded.signing_secret,
               updated_at = now()
        """,
        (project_id, url.strip(), secret),
    )
    return {
        "project_id": project_id,
        "project": name,
        "url": url.strip(),
        "resolved": str(address),
        "signing_secret": secret,
    }


def set_quota(conn: psycopg.Connection[Any], ref: str, limit: int | None) -> dict[str, Any]:
    """Override the monthly job-run limit (None: back to the plan's number). The same
    override as ``gateway project set-limits --job-runs-monthly`` (``gateway/quotas``)."""
    project_id, name = _project_id(conn, ref)
    conn.execute(
        "UPDATE gateway.projects SET job_runs_limit_monthly = %s, updated_at = now() WHERE id = %s",
        (limit, project_id),
    )
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            "SELECT p.tier, l.job_runs_monthly FROM gateway.projects p"
            " JOIN gateway.project_limits l ON l.project_id = p.id WHERE p.id = %s",
            (project_id,),
        )
        .fetchone()
    )
    tier = row["tier"] if row else "free"
    effective = row["job_runs_monthly"] if row else limit
    return {"project_id": project_id, "project": name, "tier": tier, "monthly_runs": effective}


def stats(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    depth = cur.execute(
        """
        SELECT
          count(*) FILTER (WHERE status = 'pending' AND run_at <= now()) AS pending,
          count(*) FILTER (WHERE status = 'pending' AND run_at > now()) AS delayed,
          count(*) FILTER (WHERE status = 'active') AS active,
          count(*) FILTER (WHERE status = 'completed') AS completed,
          count(*) FILTER (WHERE status = 'failed') AS failed,
          count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
          coalesce(extract(epoch FROM now() - min(run_at)
                   FILTER (WHERE status = 'pending' AND run_at <= now())), 0)::float
              AS oldest_pending_s,
          count(*) FILTER (WHERE created_at > now() - interval '1 hour') AS enqueued_1h,
          count(*) FILTER (WHERE status = 'completed'
                           AND finished_at > now() - interval '1 hour') AS completed_1h,
          count(*) FILTER (WHERE status = 'failed'
                           AND finished_at > now() - interval '1 hour') AS failed_1h
        FROM gateway.jobs
        """
    ).fetchone()
    projects = cur.execute(
        """
        SELECT p.name AS project,
               count(*) FILTER (WHERE j.status = 'pending') AS queued,
               count(*) FILTER (WHERE j.status = 'active') AS active,
               count(*) FILTER (WHERE j.status = 'failed') AS failed
          FROM gateway.jobs j JOIN gateway.projects p ON p.id = j.project_id
         GROUP BY p.name
         ORDER BY queued DESC, active DESC, p.name
         LIMIT 10
        """
    ).fetchall()
    usage = cur.execute(
        """
        SELECT p.name AS project, u.used,
               l.job_runs_monthly AS "limit"
          FROM gateway.job_usage u
          JOIN gateway.projects p ON p.id = u.project_id
          JOIN gateway.project_limits l ON l.project_id = u.project_id
         WHERE u.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
         ORDER BY u.used DESC
         LIMIT 10
        """
    ).fetchall()
    workers = cur.execute(
        """
        SELECT locked_by AS worker, count(*) AS active FROM gateway.jobs
         WHERE status = 'active' GROUP BY locked_by ORDER BY 2 DESC
        """
    ).fetchall()
    return {
        "depth": {
            k: (float(v) if k == "oldest_pending_s" else int(v)) for k, v in (depth or {}).items()
        },
        "top_projects": [dict(r) for r in projects],
        "runs_this_month": [dict(r) for r in usage],
        "active_by_worker": [dict(r) for r in workers],
    }


def render_stats(report: dict[str, Any]) -> str:
    d = report["depth"]
    lines = [
        f"queue: {d['pending']} pending, {d['delayed']} delayed, {d['active']} active, "
        f"{d['completed']} completed, {d['failed']} failed, {d['cancelled']} cancelled",
        f"oldest pending job waits {d['oldest_pending_s']:.1f} s",
        f"last hour: {d['enqueued_1h']} enqueued, {d['completed_1h']} completed, "
        f"{d['failed_1h']} failed",
    ]
    if report["top_projects"]:
        lines.append("projects (queued / active / failed):")
        lines += [
            f"  {p['project']}: {p['queued']} / {p['active']} / {p['failed']}"
            for p in report["top_projects"]
        ]
    if report["runs_this_month"]:
        lines.append("job runs this month:")
        for u in report["runs_this_month"]:
            limit = u["limit"] if u["limit"] is not None else "unlimited"
            lines.append(f"  {u['project']}: {u['used']} of {limit}")
    if report["active_by_worker"]:
        lines.append("running by worker:")
        lines += [f"  {w['worker']}: {w['active']}" for w in report["active_by_worker"]]
    return "\n".join(lines)


# --- gateway worker -----------------------------------------------------------------------


async def run_worker(settings: Settings) -> None:
    """Workers and the cron tick without HTTP: a pool planned like any instance's, the
    listener connection (NOTIFY wake-up), and a maintenance loop for retention."""
    plan = await plan_for(settings)
    pool = create_pool(settings, plan)
    await pool.open(wait=True, timeout=30.0)
    maintenance = Maintenance(settings, pool)
    runtime = JobsRuntime(settings, {"maintenance": maintenance})
    listener = MetadataListener(settings)
    listener.add_channel(CHANNEL, runtime.wake)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await listener.start()
        await runtime.start(pool)
        maintenance.start()
        logger.warning(
            "gateway worker %s: %d deliveries at once; %s",
            settings.instance_id,
            settings.jobs_concurrency,
            plan.summary(),
        )
        await stop.wait()
    finally:
        await maintenance.stop()
        await runtime.stop()
        await listener.stop()
        await pool.close()


# --- the command line ---------------------------------------------------------------------


def cmd_set_endpoint(cli: CommandLine, args: argparse.Namespace) -> None:
    settings = cli.settings()
    try:
        with cli.connect_project(args.project) as conn:
            result = set_endpoint(conn, settings, args.project, args.url)
    except JobsCommandError as exc:
        raise UsageError(str(exc)) from None
    emit(
        args,
        result,
        f"{result['project']}: jobs are delivered to {result['url']}\n"
        f"signing secret (shown once, keep it): {result['signing_secret']}",
    )


def cmd_set_quota(cli: CommandLine, args: argparse.Namespace) -> None:
    limit = None if args.monthly_runs == "default" else non_negative_int(args.monthly_runs)
    with cli.connect_project(args.project) as conn:
        result = set_quota(conn, args.project, limit)
    runs = result["monthly_runs"]
    emit(
        args,
        result,
        f"{result['project']}: {runs if runs is not None else 'unlimited'} job runs/month",
    )


def cmd_stats(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect() as conn:
        report = stats(conn)
    emit(args, report, render_stats(report))


def cmd_worker(cli: CommandLine, args: argparse.Namespace) -> None:
    settings = cli.settings()
    if settings.jobs_concurrency < 1:
        raise UsageError("GATEWAY_JOBS_CONCURRENCY is 0: a worker without workers would idle")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run_worker(settings))


def register(cli: CommandLine) -> None:
    top = cli.subcommands
    cli.command(top, "worker", cmd_worker, "run job delivery workers and the cron tick (no HTTP)")
    group = cli.group("jobs", "background jobs")
    p = cli.command(group, "set-endpoint", cmd_set_endpoint, "where a project's jobs are delivered")
    p.add_argument("project")
    p.add_argument("url")
    p = cli.command(group, "set-quota", cmd_set_quota, "override a project's monthly job runs")
    p.add_argument("project")
    p.add_argument("monthly_runs", metavar="N|default")
    cli.command(group, "stats", cmd_stats, "queue depth, oldest pending job, runs this month")
