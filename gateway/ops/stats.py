"""``gateway stats``: what the request log says about a recent period.

Requests per instance (the distribution across instances), the top projects by requests
and by 429s, status counts and duration percentiles (``percentile_cont``), all from
``gateway.request_log`` over the last ``--since`` (``30m``, ``1h``, ``2d``; default 1h).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import psycopg
from psycopg.rows import tuple_row

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TOP = 10


def parse_since(text: str) -> dt.timedelta:
    """``30m``, ``1h``, ``2d``, ``90s``, ``1w`` → a positive timedelta; ValueError otherwise."""
    match = _SINCE.match(text or "")
    if not match:
        raise ValueError(f"--since {text!r}: expected a number and a unit s/m/h/d/w, e.g. 1h")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"--since {text!r} must be longer than zero")
    return dt.timedelta(seconds=seconds)


def _pct(part: int, total: int) -> float:
    return round(100.0 * part / total, 2) if total else 0.0


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def collect(conn: psycopg.Connection[Any], since: dt.timedelta) -> dict[str, Any]:
    """One JSON-able report of the log since ``now() - since`` (database clock)."""
    window = (since,)
    where = "created_at >= now() - %s"

    cur = conn.cursor(row_factory=tuple_row)

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return cur.execute(sql, window).fetchall()

    (total, rate_limited, p50, p95, p99, first, last) = cur.execute(
        f"""
        SELECT count(*),
               count(*) FILTER (WHERE status_code = 429),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms),
               min(created_at), max(created_at)
        FROM gateway.request_log WHERE {where}
        """,
        window,
    ).fetchone() or (0, 0, None, None, None, None, None)

    instances = [
        {
            "instance_id": instance_id,
            "requests": count,
            "share_pct": _pct(count, total),
            "rate_limited": limited,
            "errors_5xx": errors,
            "p95_ms": _ms(p95_i),
        }
        for instance_id, count, limited, errors, p95_i in rows(
            f"""
            SELECT instance_id, count(*),
                   count(*) FILTER (WHERE status_code = 429),
                   count(*) FILTER (WHERE status_code >= 500),
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
            FROM gateway.request_log WHERE {where}
            GROUP BY instance_id ORDER BY count(*) DESC, instance_id
            """
        )
    ]

    def top_projects(order_by: str) -> list[dict[str, Any]]:
        return [
            {
                "project_id": str(project_id) if project_id else None,
                "name": name,
                "requests": count,
                "rate_limited": limited,
            }
            for project_id, name, count, limited in rows(
                f"""
                SELECT l.project_id, p.name, l.n, l.limited
                FROM (
                    SELECT project_id, count(*) AS n,
                           count(*) FILTER (WHERE status_code = 429) AS limited
                    FROM gateway.request_log WHERE {where}
                    GROUP BY project_id
                ) l
                LEFT JOIN gateway.projects p ON p.id = l.project_id
                WHERE l.{order_by} > 0
                ORDER BY l.{order_by} DESC, l.project_id
                LIMIT {TOP}
                """
            )
        ]

    status_counts = {
        str(status): count
        for status, count in rows(
            f"""
            SELECT status_code, count(*) FROM gateway.request_log WHERE {where}
            GROUP BY status_code ORDER BY status_code
            """
        )
    }
    return {
        "since_seconds": since.total_seconds(),
        "first_at": first.isoformat() if first else None,
        "last_at": last.isoformat() if last else None,
        "requests": total,
        "rate_limited": rate_limited,
        "instances": instances,
        "top_projects_by_requests": top_projects("n"),
        "top_projects_by_429": top_projects("limited"),
        "status_counts": status_counts,
        "duration_ms": {"p50": _ms(p50), "p95": _ms(p95), "p99": _ms(p99)},
    }


def render_text(report: dict[str, Any], since_text: str) -> str:
    lines = [
        f"requests in the last {since_text}: {report['requests']} "
        f"({report['rate_limited']} answered 429)"
    ]
    d = report["duration_ms"]
    if report["requests"]:
        lines.append(f"duration ms: p50 {d['p50']}  p95 {d['p95']}  p99 {d['p99']}")
    lines.append("")
    lines.append("per instance:")
    if not report["instances"]:
        lines.append("  (none)")
    for i in report["instances"]:
        lines.append(
            f"  {i['instance_id']:<32} {i['requests']:>9}  {i['share_pct']:>6.2f}%  "
            f"429: {i['rate_limited']}  5xx: {i['errors_5xx']}  p95 {i['p95_ms']} ms"
        )
    for key, title in (
        ("top_projects_by_requests", "top projects by requests:"),
        ("top_projects_by_429", "top projects by 429s:"),
    ):
        lines.append("")
        lines.append(title)
        if not report[key]:
            lines.append("  (none)")
        for p in report[key]:
            label = p["name"] or p["project_id"] or "(no project)"
            lines.append(f"  {label:<40} {p['requests']:>9} requests  {p['rate_limited']:>7} x 429")
    lines.append("")
    lines.append("status codes:")
    if not report["status_counts"]:
        lines.append("  (none)")
    for status, count in report["status_counts"].items():
        lines.append(f"  {status}: {count}")
    return "\n".join(lines)
