"""Creating, changing, reading and deleting projects: what ``gateway project`` and the
admin API's ``/projects`` routes do.

Each operation runs in one transaction on the direct URL, so a refused or failed
command leaves nothing half-created. Project data lives in its own schema owned by a
NOLOGIN role of the same name; the gateway's user is a member of every project role so
that requests can ``SET LOCAL ROLE`` into exactly one project. Keys (``keys.py``) and
tables (``tables.py``) name their project by id or name through ``find_project``.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from gateway.control.errors import ConflictError, NotFoundError, ProvisioningError
from gateway.quotas.plans import OVERRIDE_COLUMNS

PROJECT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_LIMIT = 2**31 - 1
PAGE_MAX = 100


@dataclass(frozen=True)
class Project:
    """A project with its EFFECTIVE limits (plan + overrides, gateway.project_limits);
    ``tier`` is its plan; ``requests_limit_daily`` None = unlimited."""

    id: str
    name: str
    schema_name: str
    tier: str
    rate_limit_per_minute: int
    requests_limit_daily: int | None
    status: str

    @property
    def plan(self) -> str:
        return self.tier

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "schema_name": self.schema_name,
            "tier": self.tier,  # the plan's name
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "requests_limit_daily": self.requests_limit_daily,
            "status": self.status,
        }


# the project row with its effective limits (quotas: plan + overrides)
PROJECT_SELECT = """
    SELECT p.id, p.name, p.schema_name, p.tier, p.status,
           l.rate_limit_per_minute, l.requests_per_day AS requests_limit_daily
      FROM gateway.projects p
      JOIN gateway.project_limits l ON l.project_id = p.id
"""


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    """The synchronous connection every control operation runs on: rows as dicts (the
    operations read columns by name), and a name that shows CLI sessions apart in
    ``pg_stat_activity``."""
    return psycopg.connect(url, row_factory=dict_row, application_name="gateway-cli")


def _check_limit(value: int | None, what: str) -> None:
    if value is not None and not 0 <= value <= MAX_LIMIT:
        raise ProvisioningError(f"{what} must be between 0 and {MAX_LIMIT}")


def _project_from_row(row: dict[str, Any]) -> Project:
    return Project(
        id=str(row["id"]),
        name=row["name"],
        schema_name=row["schema_name"],
        tier=row["tier"],
        rate_limit_per_minute=row["rate_limit_per_minute"],
        requests_limit_daily=row["requests_limit_daily"],
        status=row["status"],
    )


def find_project(conn: psycopg.Connection[Any], ref: str) -> Project:
    """PROJECT on the command line is an id or a name. A reference with a NUL (a URL's
    ``%00``) names no project: PostgreSQL text can't hold one, so it is not sent."""
    if "\x00" in ref:
        raise NotFoundError(f"no project {ref!r}")
    try:
        project_id = uuid.UUID(ref)
    except ValueError:
        project_id = None
    if project_id is not None:
        row = conn.execute(PROJECT_SELECT + " WHERE p.id = %s", [project_id]).fetchone()
    elif PROJECT_NAME_RE.match(ref):
        row = conn.execute(PROJECT_SELECT + " WHERE p.name = %s", [ref]).fetchone()
    else:  # no project has such a name; and a NUL in it would be a database error
        row = None
    if row is None:
        raise NotFoundError(f"no project {ref!r}")
    return _project_from_row(row)


def create_project(
    conn: psycopg.Connection[Any],
    name: str,
    *,
    tier: str = "free",
    rate_limit_per_minute: int | None = None,
    requests_per_day: int | None = None,
) -> Project:
    if not PROJECT_NAME_RE.match(name):
        raise ProvisioningError(
            f"project name {name!r} is not valid (letters, digits, _ . -; at most 63 characters)"
        )
    _check_limit(rate_limit_per_minute, "--rate-limit-per-minute")
    _check_limit(requests_per_day, "--requests-per-day")
    schema = "p_" + secrets.token_hex(6)
    with conn.transaction():
        if conn.execute("SELECT 1 FROM gateway.projects WHERE name = %s", [name]).fetchone():
            raise ConflictError(f"a project named {name!r} already exists", field="name")
        _check_plan(conn, tier)
        # the limits given are overrides; the others come from the plan (NULL)
        conn.execute(
            """
            INSERT INTO gateway.projects
                (name, schema_name, tier, rate_limit_per_minute, requests_limit_daily)
            VALUES (%s, %s, %s, %s, %s)
            """,
            [name, schema, tier, rate_limit_per_minute, requests_per_day],
        )
        row = conn.execute(PROJECT_SELECT + " WHERE p.name = %s", [name]).fetchone()
        assert row is not None
        role = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
        conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(role, role))
    return _project_from_row(row)


def _check_plan(conn: psycopg.Connection[Any], plan: str) -> None:
    if conn.execute("SELECT 1 FROM gateway.plans WHERE name = %s", [plan]).fetchone() is None:
        names = [r["name"] for r in conn.execute("SELECT name FROM gateway.plans ORDER BY name")]
        raise ProvisioningError(
            f"plan (tier) {plan!r} is not one of {', '.join(names)}", field="tier"
        )


def set_limits(
    conn: psycopg.Connection[Any],
    ref: str,
    *,
    rate_limit_per_minute: int | None = None,
    requests_per_day: int | None = None,
    status: str | None = None,
    plan: str | None = None,
    overrides: dict[str, int | None] | None = None,
    tier: str | None = None,
) -> Project:
    """Change a project's status, plan and limit overrides.

    ``tier`` is the plan (the admin API's name for it; ``plan`` is the same). The limits
    are overrides of the plan's: ``rate_limit_per_minute`` / ``requests_per_day`` as
    before plans; ``overrides`` maps a plan field (gateway.quotas.plans.PLAN_FIELDS) to a
    value, -1 = unlimited, or None = inherit the plan's value again. Every instance reads
    the new limits on its next request (admission reads them in its statement; the change
    notifies, which drops local denies).
    """
    if tier is not None and plan is not None and tier != plan:
        raise ProvisioningError("give the plan once (--plan or tier)", field="tier")
    plan = plan if plan is not None else tier
    changes: dict[str, int | None] = dict(overrides or {})
    if rate_limit_per_minute is not None:
        changes["rate_limit_per_minute"] = rate_limit_per_minute
    if requests_per_day is not None:
        changes["requests_per_day"] = requests_per_day
    if not changes and not status and not plan:
        raise ProvisioningError(
            "nothing to change: give --rate-limit-per-minute, --requests-per-day, another "
            "limit, --status or --plan (--tier)"
        )
    _check_limit(rate_limit_per_minute, "--rate-limit-per-minute")
    _check_limit(requests_per_day, "--requests-per-day")
    if status is not None and status not in ("active", "suspended"):
        raise ProvisioningError("status must be active or suspended", field="status")
    unknown = sorted(set(changes) - set(OVERRIDE_COLUMNS))
    if unknown:
        raise ProvisioningError(f"unknown limit {unknown[0]!r}", field=unknown[0])
    for name, value in changes.items():
        lowest = 0 if name == "rate_limit_per_minute" else -1
        if value is not None and not lowest <= value <= 2**62:
            raise ProvisioningError(f"--{name.replace('_', '-')} must be >= {lowest}", field=name)
    assignments = [
        sql.SQL("{} = {}").format(sql.Identifier(OVERRIDE_COLUMNS[f]), sql.Placeholder())
        for f in changes
    ]
    with conn.transaction():
        project = find_project(conn, ref)
        if plan is not None:
            _check_plan(conn, plan)
        conn.execute(
            sql.SQL(
                "UPDATE gateway.projects SET {} status = coalesce(%s, status), "
                "tier = coalesce(%s, tier), updated_at = now() WHERE id = %s"
            ).format(sql.SQL("").join(sql.SQL("{}, ").format(a) for a in assignments)),
            [*changes.values(), status, plan, project.id],
        )
        row = conn.execute(PROJECT_SELECT + " WHERE p.id = %s", [project.id]).fetchone()
    assert row is not None
    return _project_from_row(row)


# --- reading and deleting (shared by the CLI and the admin API) ---------------------------


def _project_json(row: dict[str, Any]) -> dict[str, Any]:
    created: dt.datetime | None = row.get("created_at")
    updated: dt.datetime | None = row.get("updated_at")
    return {
        **_project_from_row(row).as_json(),
        "created_at": created.isoformat() if created else None,
        "updated_at": updated.isoformat() if updated else None,
    }


def list_projects(
    conn: psycopg.Connection[Any], *, limit: int = 20, offset: int = 0
) -> dict[str, Any]:
    """One page of projects, oldest first (a stable order while projects are added)."""
    if not 1 <= limit <= PAGE_MAX:
        raise ProvisioningError(f"limit must be between 1 and {PAGE_MAX}", field="limit")
    if not 0 <= offset <= MAX_LIMIT:
        raise ProvisioningError("offset must be 0 or more", field="offset")
    rows = conn.execute(
        """
        SELECT *, count(*) OVER () AS total FROM gateway.projects
         ORDER BY created_at, id LIMIT %s OFFSET %s
        """,
        [limit, offset],
    ).fetchall()
    if rows:
        total = int(rows[0]["total"])
    else:
        found = conn.execute("SELECT count(*) AS n FROM gateway.projects").fetchone()
        total = int(found["n"]) if found else 0
    return {
        "projects": [_project_json(r) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
        "hasMore": offset + len(rows) < total,
    }


def get_project(conn: psycopg.Connection[Any], ref: str) -> dict[str, Any]:
    """The project, its tables' names and its active keys' count."""
    project = find_project(conn, ref)
    row = conn.execute(
        """
        SELECT p.*,
               (SELECT coalesce(array_agg(t.name ORDER BY t.name), '{}')
                  FROM gateway.table_registry t WHERE t.project_id = p.id) AS tables,
               (SELECT count(*) FROM gateway.api_keys k
                 WHERE k.project_id = p.id AND k.status = 'active') AS active_keys
          FROM gateway.projects p WHERE p.id = %s
        """,
        [project.id],
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no project {ref!r}")
    return {**_project_json(row), "tables": list(row["tables"]), "active_keys": row["active_keys"]}


def delete_project(conn: psycopg.Connection[Any], ref: str, *, confirm: str) -> dict[str, Any]:
    """Drop the project's schema (every table in it) and role, and its rows (keys, registry,
    counters cascade), in one transaction — only when ``confirm`` is the project's name."""
    with conn.transaction():
        project = find_project(conn, ref)
        if confirm != project.name:
            raise ProvisioningError(
                f"confirm must be the project's name ({project.name!r}) to delete it",
                field="confirm",
            )
        role = sql.Identifier(project.schema_name)
        conn.execute(
            "SELECT id FROM gateway.projects WHERE id = %s FOR UPDATE", [project.id]
        ).fetchone()
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(role))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute("DELETE FROM gateway.projects WHERE id = %s", [project.id])
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
        # every instance forgets the project's metadata and local denies now
        conn.execute("SELECT pg_notify('gateway_metadata', %s)", [project.id])
    return {"id": project.id, "name": project.name, "deleted": True}
