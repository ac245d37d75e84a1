"""Creating and changing projects, keys and tables: what the ``gateway`` CLI does.

Each operation runs in one transaction on the direct URL, so a refused or failed
command leaves nothing half-created. Project data lives in its own schema owned by a
NOLOGIN role of the same name; the gateway's user is a member of every project role so
that requests can ``SET LOCAL ROLE`` into exactly one project.
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

from gateway.auth import keys as auth
from gateway.control.tabledef import ColumnDef, TableDef, check_name, column_ddl, create_table_ddl
from gateway.db.models import KEY_STATUSES
from gateway.quotas.plans import OVERRIDE_COLUMNS

PROJECT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SCOPES = ("read", "write")
MAX_LIMIT = 2**31 - 1


class ProvisioningError(ValueError):
    """Input we refuse; the message is one line for the person at the terminal."""


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
    """PROJECT on the command line is an id or a name."""
    try:
        project_id = uuid.UUID(ref)
    except ValueError:
        project_id = None
    if project_id is not None:
        row = conn.execute(PROJECT_SELECT + " WHERE p.id = %s", [project_id]).fetchone()
    else:
        row = conn.execute(PROJECT_SELECT + " WHERE p.name = %s", [ref]).fetchone()
    if row is None:
        raise ProvisioningError(f"no project {ref!r}")
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
            raise ProvisioningError(f"a project named {name!r} already exists")
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
        raise ProvisioningError(f"plan (tier) {plan!r} is not one of {', '.join(names)}")


def set_limits(
    conn: psycopg.Connection[Any],
    ref: str,
    *,
    rate_limit_per_minute: int | None = None,
    requests_per_day: int | None = None,
    status: str | None = None,
    plan: str | None = None,
    overrides: dict[str, int | None] | None = None,
) -> Project:
    """Change a project's status, plan and limit overrides.

    ``rate_limit_per_minute`` / ``requests_per_day`` set those overrides (as before plans);
    ``overrides`` maps a plan field (gateway.quotas.plans.PLAN_FIELDS) to a value, -1 =
    unlimited, or None = inherit the plan's value again. Every instance reads the new
    limits on its next request (admission reads them in its statement; the change
    notifies, which drops local denies).
    """
    _check_limit(rate_limit_per_minute, "--rate-limit-per-minute")
    _check_limit(requests_per_day, "--requests-per-day")
    if status is not None and status not in ("active", "suspended"):
        raise ProvisioningError("status must be active or suspended")
    changes: dict[str, int | None] = dict(overrides or {})
    if rate_limit_per_minute is not None:
        changes["rate_limit_per_minute"] = rate_limit_per_minute
    if requests_per_day is not None:
        changes["requests_per_day"] = requests_per_day
    unknown = sorted(set(changes) - set(OVERRIDE_COLUMNS))
    if unknown:
        raise ProvisioningError(f"unknown limit {unknown[0]!r}")
    for field, value in changes.items():
        lowest = 0 if field == "rate_limit_per_minute" else -1
        if value is not None and not lowest <= value <= 2**62:
            raise ProvisioningError(f"--{field.replace('_', '-')} must be >= {lowest}")
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


def create_key(
    conn: psycopg.Connection[Any],
    ref: str,
    *,
    key_type: str,
    scopes: list[str] | None = None,
    expires_in_s: int | None = None,
) -> dict[str, Any]:
    if key_type not in ("public", "server"):
        raise ProvisioningError("--type must be public or server")
    scopes = list(dict.fromkeys(scopes or list(SCOPES)))
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ProvisioningError(f"--scopes must be a comma-separated subset of {','.join(SCOPES)}")
    if expires_in_s is not None and not 0 < expires_in_s <= 10 * 365 * 86400:
        raise ProvisioningError("--expires-in must be a positive number of seconds (max 10 years)")
    with conn.transaction():
        project = find_project(conn, ref)
        new_key, row = _insert_key(conn, project.id, key_type, scopes, expires_in_s)
    assert row is not None
    expires_at: dt.datetime | None = row["expires_at"]
    return {
        "id": str(row["id"]),
        "key": new_key.key,
        "prefix": new_key.prefix,
        "type": key_type,
        "scopes": scopes,
        "expires_at": expires_at.isoformat() if expires_at else None,
        "project_id": project.id,
    }


KEY_INSERT = """
    INSERT INTO gateway.api_keys (project_id, key_prefix, key_hash, key_type, scopes, expires_at)
    VALUES (%s, %s, %s, %s, %s,
            CASE WHEN %s::int IS NULL THEN NULL ELSE now() + make_interval(secs => %s::int) END)
    RETURNING id, expires_at
"""
PREFIX_ATTEMPTS = 20


def _insert_key(
    conn: psycopg.Connection[Any],
    project_id: str,
    key_type: str,
    scopes: list[str],
    expires_in_s: int | None,
) -> tuple[auth.NewKey, dict[str, Any]]:
    """Insert a fresh key, drawing again when its visible prefix is already taken.

    The 12-character prefix holds only three random characters after ``sheen_pk_``, and
    the contract keeps it unique, so collisions are expected once there are a few
    hundred keys; each draw runs in a savepoint so a collision costs one retry.
    """
    for _ in range(PREFIX_ATTEMPTS):
        new_key = auth.generate_key(key_type)
        params = [project_id, new_key.prefix, new_key.key_hash, key_type, scopes]
        try:
            with conn.transaction():
                row = conn.execute(KEY_INSERT, [*params, expires_in_s, expires_in_s]).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "api_keys_key_prefix_key":
                continue
            raise
        assert row is not None
        return new_key, row
    raise ProvisioningError("could not find a free key prefix; try again")


def revoke_key(conn: psycopg.Connection[Any], key_id: str) -> dict[str, Any]:
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise ProvisioningError(f"{key_id!r} is not a key id (a UUID)") from None
    with conn.transaction():
        row = conn.execute(
            """
            UPDATE gateway.api_keys
               SET status = 'revoked', revoked_at = coalesce(revoked_at, now())
             WHERE id = %s
            RETURNING id, status
            """,
            [parsed],
        ).fetchone()
    if row is None:
        raise ProvisioningError(f"no key with id {key_id}")
    assert row["status"] in KEY_STATUSES
    return {"id": str(row["id"]), "status": row["status"]}


def create_table(conn: psycopg.Connection[Any], ref: str, table: TableDef) -> dict[str, Any]:
    """DDL in the project's schema and the registry rows, in one transaction."""
    with conn.transaction():
        project = find_project(conn, ref)
        exists = conn.execute(
            "SELECT 1 FROM gateway.table_registry WHERE project_id = %s AND name = %s",
            [project.id, table.name],
        ).fetchone()
        if exists:
            raise ProvisioningError(f"table {table.name!r} already exists in {project.name}")
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(project.schema_name)))
        try:
            conn.execute(create_table_ddl(project.schema_name, table))
        except psycopg.errors.DuplicateTable:
            raise ProvisioningError(
                f"table {table.name!r} already exists in the project's schema"
            ) from None
        except (psycopg.errors.DataError, psycopg.errors.InvalidTextRepresentation) as exc:
            raise ProvisioningError(f"invalid default: {exc.diag.message_primary}") from None
        conn.execute("RESET ROLE")
        table_id = register_table(conn, project.id, table)
        install_table_hooks(conn, project, table)
    return {
        "project_id": project.id,
        "schema_name": project.schema_name,
        "table": table.name,
        "table_id": table_id,
        "columns": [c.name for c in table.columns],
    }


def register_table(conn: psycopg.Connection[Any], project_id: str, table: TableDef) -> int:
    row = conn.execute(
        """
        INSERT INTO gateway.table_registry
            (project_id, name, allow_client_read, allow_client_write, realtime)
        VALUES (%s, %s, %s, %s, %s)
        RETURNING id
        """,
        [project_id, table.name, table.client_read, table.client_write, table.realtime],
    ).fetchone()
    assert row is not None
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO gateway.column_registry
                (table_id, name, ordinal, data_type, is_nullable, is_primary_key, has_default,
                 is_sensitive, allow_client_read, allow_client_write)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            [
                (
                    row["id"],
                    c.name,
                    i + 1,
                    c.type,
                    c.nullable,
                    c.primary_key,
                    c.has_default,
                    c.sensitive,
                    c.client_read,
                    c.client_write,
                )
                for i, c in enumerate(table.columns)
            ],
        )
    return int(row["id"])


CAPTURE_TRIGGER = "gateway_realtime_capture"


def install_table_hooks(conn: psycopg.Connection[Any], project: Project, table: TableDef) -> None:
    """Per-table triggers: realtime capture, unless the definition says ``"realtime": false``.

    Runs inside ``create_table``'s transaction, after ``register_table`` wrote
    ``table_registry.realtime`` from the same definition.
    """
    check_name(table.name, "table name")
    if table.realtime:
        primary_key = [c.name for c in table.columns if c.primary_key]
        _create_capture_trigger(conn, project, table.name, primary_key)


def _create_capture_trigger(
    conn: psycopg.Connection[Any], project: Project, table: str, primary_key: list[str]
) -> None:
    """AFTER INSERT/UPDATE/DELETE FOR EACH ROW → ``gateway.capture_change(project, pk...)``.

    Identifiers are checked names from the registry; the arguments are literals.
    """
    check_name(table, "table name")
    if not primary_key:
        raise ProvisioningError(f"table {table!r} has no primary key: realtime needs one")
    args = [sql.Literal(project.id)] + [sql.Literal(check_name(c, "column")) for c in primary_key]
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {}.{} "
            "FOR EACH ROW EXECUTE FUNCTION gateway.capture_change({})"
        ).format(
            sql.Identifier(CAPTURE_TRIGGER),
            sql.Identifier(project.schema_name),
            sql.Identifier(table),
            sql.SQL(", ").join(args),
        )
    )


def _drop_capture_trigger(conn: psycopg.Connection[Any], project: Project, table: str) -> None:
    conn.execute(
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}.{}").format(
            sql.Identifier(CAPTURE_TRIGGER),
            sql.Identifier(project.schema_name),
            sql.Identifier(check_name(table, "table name")),
        )
    )


def set_realtime(
    conn: psycopg.Connection[Any], ref: str, table: str, *, enabled: bool
) -> dict[str, Any]:
    """``gateway table realtime``: install or drop the capture trigger and flip the registry.

    One transaction; idempotent (enabling an enabled table recreates its trigger, so a
    trigger lost to manual DDL comes back).
    """
    with conn.transaction():
        project = find_project(conn, ref)
        row = conn.execute(
            """
            SELECT id, name FROM gateway.table_registry
             WHERE project_id = %s AND name = %s
               FOR UPDATE
            """,
            [project.id, table],
        ).fetchone()
        if row is None:
            raise ProvisioningError(f"no table {table!r} in {project.name}")
        primary_key = [
            r["name"]
            for r in conn.execute(
                """
                SELECT name FROM gateway.column_registry
                 WHERE table_id = %s AND is_primary_key ORDER BY ordinal
                """,
                [row["id"]],
            ).fetchall()
        ]
        _drop_capture_trigger(conn, project, row["name"])
        if enabled:
            _create_capture_trigger(conn, project, row["name"], primary_key)
        conn.execute(
            "UPDATE gateway.table_registry SET realtime = %s WHERE id = %s", [enabled, row["id"]]
        )
    return {
        "project_id": project.id,
        "table": row["name"],
        "table_id": int(row["id"]),
        "realtime": enabled,
    }


# --- changing a table (each change reaches every instance through the registry triggers) ---


def _registered_table(
    conn: psycopg.Connection[Any], project: Project, table: str
) -> dict[str, Any]:
    check_name(table, "table name")
    row = conn.execute(
        "SELECT * FROM gateway.table_registry WHERE project_id = %s AND name = %s FOR UPDATE",
        [project.id, table],
    ).fetchone()
    if row is None:
        raise ProvisioningError(f"no table {table!r} in project {project.name}")
    return row


def _as_project_role(conn: psycopg.Connection[Any], project: Project) -> None:
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(project.schema_name)))


def add_column(
    conn: psycopg.Connection[Any], ref: str, table: str, column: ColumnDef
) -> dict[str, Any]:
    """ALTER TABLE … ADD COLUMN as the project's role, and the registry row, in one transaction.

    A NOT NULL column without a default can't be added to a table that has rows: refused
    before any change, with what to do instead.
    """
    if column.primary_key or column.identity:
        raise ProvisioningError("add-column can't add a primary key or identity column")
    with conn.transaction():
        project = find_project(conn, ref)
        registered = _registered_table(conn, project, table)
        taken = conn.execute(
            "SELECT 1 FROM gateway.column_registry WHERE table_id = %s AND name = %s",
            [registered["id"], column.name],
        ).fetchone()
        if taken:
            raise ProvisioningError(f"table {table!r} already has a column {column.name!r}")
        qualified = sql.SQL("{}.{}").format(
            sql.Identifier(project.schema_name), sql.Identifier(table)
        )
        _as_project_role(conn, project)
        try:
            if not column.nullable and not column.has_default:
                found = conn.execute(
                    sql.SQL("SELECT EXISTS (SELECT 1 FROM {}) AS has_rows").format(qualified)
                ).fetchone()
                if found is not None and found["has_rows"]:
                    raise ProvisioningError(
                        f"table {table!r} has rows: a NOT NULL column without a default can't "
                        "be added (give --nullable or --default)"
                    )
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(qualified, column_ddl(column))
            )
        except psycopg.errors.DuplicateColumn:
            raise ProvisioningError(
                f"column {column.name!r} already exists in the table (but not in the registry)"
            ) from None
        except psycopg.errors.UndefinedTable:
            raise ProvisioningError(
                f"table {table!r} is registered but missing from the project's schema"
            ) from None
        except psycopg.errors.NotNullViolation:
            raise ProvisioningError(
                f"table {table!r} has rows: a NOT NULL column without a default can't be added"
            ) from None
        except (psycopg.errors.DataError, psycopg.errors.InvalidTextRepresentation) as exc:
            raise ProvisioningError(f"invalid default: {exc.diag.message_primary}") from None
        conn.execute("RESET ROLE")
        row = conn.execute(
            """
            INSERT INTO gateway.column_registry
                (table_id, name, ordinal, data_type, is_nullable, is_primary_key, has_default,
                 is_sensitive, allow_client_read, allow_client_write)
            SELECT %s, %s, coalesce(max(ordinal), 0) + 1, %s, %s, false, %s, %s, %s, %s
              FROM gateway.column_registry WHERE table_id = %s
            RETURNING ordinal
            """,
            [
                registered["id"],
                column.name,
                column.type,
                column.nullable,
                column.has_default,
                column.sensitive,
                column.client_read,
                column.client_write,
                registered["id"],
            ],
        ).fetchone()
    assert row is not None
    return {
        "project_id": project.id,
        "schema_name": project.schema_name,
        "table": table,
        "column": {
            "name": column.name,
            "type": column.type,
            "ordinal": row["ordinal"],
            "nullable": column.nullable,
            "has_default": column.has_default,
            "sensitive": column.sensitive,
            "client_read": column.client_read,
            "client_write": column.client_write,
        },
    }


def set_access(
    conn: psycopg.Connection[Any],
    ref: str,
    table: str,
    *,
    column: str | None = None,
    client_read: bool | None = None,
    client_write: bool | None = None,
    sensitive: bool | None = None,
) -> dict[str, Any]:
    """Table flags (no ``column``) or one column's flags; ``sensitive`` is a column flag."""
    if client_read is None and client_write is None and sensitive is None:
        raise ProvisioningError(
            "nothing to change: give --client-read, --client-write or --sensitive"
        )
    if sensitive is not None and column is None:
        raise ProvisioningError("--sensitive is a column flag: give --column too")
    if column is not None:
        check_name(column, "column name")
    with conn.transaction():
        project = find_project(conn, ref)
        registered = _registered_table(conn, project, table)
        if column is None:
            row = conn.execute(
                """
                UPDATE gateway.table_registry
                   SET allow_client_read = coalesce(%s, allow_client_read),
                       allow_client_write = coalesce(%s, allow_client_write)
                 WHERE id = %s
                RETURNING allow_client_read, allow_client_write
                """,
                [client_read, client_write, registered["id"]],
            ).fetchone()
            assert row is not None
            return {
                "project_id": project.id,
                "table": table,
                "column": None,
                "client_read": row["allow_client_read"],
                "client_write": row["allow_client_write"],
            }
        row = conn.execute(
            """
            UPDATE gateway.column_registry
               SET allow_client_read = coalesce(%s, allow_client_read),
                   allow_client_write = coalesce(%s, allow_client_write),
                   is_sensitive = coalesce(%s, is_sensitive)
             WHERE table_id = %s AND name = %s
            RETURNING allow_client_read, allow_client_write, is_sensitive
            """,
            [client_read, client_write, sensitive, registered["id"], column],
        ).fetchone()
        if row is None:
            raise ProvisioningError(f"table {table!r} has no column {column!r}")
    return {
        "project_id": project.id,
        "table": table,
        "column": column,
        "client_read": row["allow_client_read"],
        "client_write": row["allow_client_write"],
        "sensitive": row["is_sensitive"],
    }


def drop_table(conn: psycopg.Connection[Any], ref: str, table: str) -> dict[str, Any]:
    """DROP TABLE as the project's role and unregister it (columns cascade), atomically."""
    with conn.transaction():
        project = find_project(conn, ref)
        registered = _registered_table(conn, project, table)
        _as_project_role(conn, project)
        try:
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}.{}").format(
                    sql.Identifier(project.schema_name), sql.Identifier(table)
                )
            )
        except psycopg.errors.DependentObjectsStillExist as exc:
            detail = (exc.diag.message_detail or "other objects depend on it").replace("\n", "; ")
            raise ProvisioningError(f"table {table!r} can't be dropped: {detail}") from None
        conn.execute("RESET ROLE")
        remove_table_hooks(conn, project, table)
        conn.execute("DELETE FROM gateway.table_registry WHERE id = %s", [registered["id"]])
    return {
        "project_id": project.id,
        "schema_name": project.schema_name,
        "table": table,
        "dropped": True,
    }


def remove_table_hooks(conn: psycopg.Connection[Any], project: Project, table: str) -> None:
    """Extension point mirroring ``install_table_hooks`` (runs before unregistering)."""
