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
from gateway.control.rowpolicy import apply_row_policies
from gateway.control.tabledef import (
    ColumnDef,
    DefinitionError,
    TableDef,
    check_name,
    check_row_access,
    column_ddl,
    create_table_ddl,
)
from gateway.db.models import KEY_STATUSES
from gateway.quotas.plans import OVERRIDE_COLUMNS

PROJECT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SCOPES = ("read", "write")
MAX_LIMIT = 2**31 - 1


class ProvisioningError(ValueError):
    """Input we refuse; the message is one line for the person at the terminal.

    ``field`` names the input at fault when there is one (the admin API returns it);
    the two subclasses let the API answer 404 and 409 where the CLI just prints.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(ProvisioningError):
    """The project, key or table named doesn't exist."""


class ConflictError(ProvisioningError):
    """The name is taken, or the thing is in a state that refuses the change."""


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


def _key_id(key_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(key_id)
    except ValueError:
        raise ProvisioningError(f"{key_id!r} is not a key id (a UUID)", field="key_id") from None


def revoke_key(
    conn: psycopg.Connection[Any], key_id: str, *, project: str | None = None
) -> dict[str, Any]:
    """Revoke a key (idempotent). ``project`` (id or name), when given, must own the key."""
    parsed = _key_id(key_id)
    with conn.transaction():
        owner = find_project(conn, project).id if project is not None else None
        row = conn.execute(
            """
            UPDATE gateway.api_keys
               SET status = 'revoked', revoked_at = coalesce(revoked_at, now())
             WHERE id = %s AND (%s::uuid IS NULL OR project_id = %s::uuid)
            RETURNING id, status
            """,
            [parsed, owner, owner],
        ).fetchone()
    if row is None:
        raise NotFoundError(f"no key with id {key_id}")
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
            raise ConflictError(
                f"table {table.name!r} already exists in {project.name}", field="name"
            )
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(project.schema_name)))
        try:
            conn.execute(create_table_ddl(project.schema_name, table))
        except psycopg.errors.DuplicateTable:
            raise ConflictError(
                f"table {table.name!r} already exists in the project's schema", field="name"
            ) from None
        except (psycopg.errors.DataError, psycopg.errors.InvalidTextRepresentation) as exc:
            raise ProvisioningError(
                f"invalid default: {exc.diag.message_primary}", field="default"
            ) from None
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
            (project_id, name, allow_client_read, allow_client_write, realtime,
             owner_column, row_access)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        RETURNING id
        """,
        [
            project_id,
            table.name,
            table.client_read,
            table.client_write,
            table.realtime,
            table.owner_column,
            table.row_access,
        ],
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
# statement level: row triggers don't fire for TRUNCATE (migration 0007)
TRUNCATE_TRIGGER = "gateway_realtime_truncate"


def install_table_hooks(conn: psycopg.Connection[Any], project: Project, table: TableDef) -> None:
    """Per-table triggers: realtime capture, unless the definition says ``"realtime": false``.

    Runs inside ``create_table``'s transaction, after ``register_table`` wrote
    ``table_registry.realtime`` from the same definition.
    """
    check_name(table.name, "table name")
    if table.realtime:
        primary_key = [c.name for c in table.columns if c.primary_key]
        _create_capture_trigger(conn, project, table.name, primary_key, table.owner_column)
    if table.row_access != "all":
        apply_row_policies(
            conn, project.schema_name, table.name, table.owner_column, table.row_access
        )


def _create_capture_trigger(
    conn: psycopg.Connection[Any],
    project: Project,
    table: str,
    primary_key: list[str],
    owner_column: str | None = None,
) -> None:
    """AFTER INSERT/UPDATE/DELETE FOR EACH ROW → ``gateway.capture_change(project, pk...)``,
    and AFTER TRUNCATE FOR EACH STATEMENT → ``gateway.capture_change(project)`` (one
    ``truncate`` change per truncated table).

    Identifiers are checked names from the registry; the arguments are literals. An
    owner column is passed as ``'owner:<column>'`` so each change carries its row's
    owner (streams of owner tables carry only their subscriber's rows).
    """
    check_name(table, "table name")
    if not primary_key:
        raise ProvisioningError(f"table {table!r} has no primary key: realtime needs one")
    args = [sql.Literal(project.id)] + [sql.Literal(check_name(c, "column")) for c in primary_key]
    if owner_column is not None:
        args.append(sql.Literal("owner:" + check_name(owner_column, "owner column")))
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
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} AFTER TRUNCATE ON {}.{} "
            "FOR EACH STATEMENT EXECUTE FUNCTION gateway.capture_change({})"
        ).format(
            sql.Identifier(TRUNCATE_TRIGGER),
            sql.Identifier(project.schema_name),
            sql.Identifier(table),
            sql.Literal(project.id),
        )
    )


def _drop_capture_trigger(conn: psycopg.Connection[Any], project: Project, table: str) -> None:
    for trigger in (CAPTURE_TRIGGER, TRUNCATE_TRIGGER):
        conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}.{}").format(
                sql.Identifier(trigger),
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
            SELECT id, name, owner_column FROM gateway.table_registry
             WHERE project_id = %s AND name = %s
               FOR UPDATE
            """,
            [project.id, table],
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no table {table!r} in {project.name}")
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
            _create_capture_trigger(conn, project, row["name"], primary_key, row["owner_column"])
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
        raise NotFoundError(f"no table {table!r} in project {project.name}")
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
        raise ProvisioningError(
            "add-column can't add a primary key or identity column", field="primary_key"
        )
    with conn.transaction():
        project = find_project(conn, ref)
        registered = _registered_table(conn, project, table)
        taken = conn.execute(
            "SELECT 1 FROM gateway.column_registry WHERE table_id = %s AND name = %s",
            [registered["id"], column.name],
        ).fetchone()
        if taken:
            raise ConflictError(
                f"table {table!r} already has a column {column.name!r}", field="name"
            )
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
                        "be added (give --nullable or --default)",
                        field="nullable",
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
            raise ProvisioningError(
                f"invalid default: {exc.diag.message_primary}", field="default"
            ) from None
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
        raise ProvisioningError("--sensitive is a column flag: give --column too", field="column")
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
            raise NotFoundError(f"table {table!r} has no column {column!r}", field="column")
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


# --- reading, deleting, regenerating (shared by the CLI and the admin API) ---------------

PAGE_MAX = 100


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


def _key_json(row: dict[str, Any]) -> dict[str, Any]:
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(row["id"]),
        "prefix": row["key_prefix"],
        "type": row["key_type"],
        "scopes": list(row["scopes"]),
        "status": row["status"],
        "created_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]),
        "last_used_at": iso(row["last_used_at"]),
        "revoked_at": iso(row["revoked_at"]),
    }


def list_keys(conn: psycopg.Connection[Any], ref: str) -> dict[str, Any]:
    """The project's keys without any secret: the visible prefix and the metadata."""
    project = find_project(conn, ref)
    rows = conn.execute(
        "SELECT * FROM gateway.api_keys WHERE project_id = %s ORDER BY created_at, id",
        [project.id],
    ).fetchall()
    return {"project_id": project.id, "keys": [_key_json(r) for r in rows]}


def regenerate_key(
    conn: psycopg.Connection[Any], key_id: str, *, project: str | None = None
) -> dict[str, Any]:
    """Revoke a key and create its replacement (same project, type and scopes, and the same
    lifetime counted from now if it had one) in one transaction; the new secret is
    returned once. A revoked key can't be regenerated (create a new one instead)."""
    parsed = _key_id(key_id)
    with conn.transaction():
        owner = find_project(conn, project).id if project is not None else None
        old = conn.execute(
            """
            SELECT *, extract(epoch FROM expires_at - created_at)::int AS lifetime_s
              FROM gateway.api_keys
             WHERE id = %s AND (%s::uuid IS NULL OR project_id = %s::uuid)
               FOR UPDATE
            """,
            [parsed, owner, owner],
        ).fetchone()
        if old is None:
            raise NotFoundError(f"no key with id {key_id}")
        if old["status"] != "active":
            raise ConflictError(f"key {key_id} is revoked: create a new key instead")
        if old["key_type"] not in ("public", "server"):
            raise ConflictError(f"key {key_id} is an {old['key_type']} key: not regenerated here")
        lifetime = old["lifetime_s"]
        lifetime = max(1, int(lifetime)) if lifetime is not None else None
        conn.execute(
            "UPDATE gateway.api_keys SET status = 'revoked', revoked_at = now() WHERE id = %s",
            [parsed],
        )
        project_id = str(old["project_id"])
        scopes = list(old["scopes"])
        new_key, row = _insert_key(conn, project_id, old["key_type"], scopes, lifetime)
    expires_at: dt.datetime | None = row["expires_at"]
    return {
        "id": str(row["id"]),
        "key": new_key.key,
        "prefix": new_key.prefix,
        "type": old["key_type"],
        "scopes": scopes,
        "expires_at": expires_at.isoformat() if expires_at else None,
        "project_id": project_id,
        "replaces": str(parsed),
    }


def list_tables(conn: psycopg.Connection[Any], ref: str) -> dict[str, Any]:
    """The project's registered tables with their flags and columns."""
    project = find_project(conn, ref)
    rows = conn.execute(
        """
        SELECT t.name, t.allow_client_read, t.allow_client_write, t.realtime,
               coalesce(json_agg(json_build_object(
                   'name', c.name, 'type', c.data_type, 'nullable', c.is_nullable,
                   'primary_key', c.is_primary_key, 'has_default', c.has_default,
                   'sensitive', c.is_sensitive, 'client_read', c.allow_client_read,
                   'client_write', c.allow_client_write) ORDER BY c.ordinal)
                 FILTER (WHERE c.id IS NOT NULL), '[]') AS columns
          FROM gateway.table_registry t
          LEFT JOIN gateway.column_registry c ON c.table_id = t.id
         WHERE t.project_id = %s
         GROUP BY t.id ORDER BY t.name
        """,
        [project.id],
    ).fetchall()
    return {
        "project_id": project.id,
        "tables": [
            {
                "name": r["name"],
                "client_read": r["allow_client_read"],
                "client_write": r["allow_client_write"],
                "realtime": r["realtime"],
                "columns": r["columns"],
            }
            for r in rows
        ],
    }


def create_table_from_definition(
    conn: psycopg.Connection[Any], ref: str, definition: object
) -> dict[str, Any]:
    """``gateway table create --file`` and ``POST …/tables``: the definition JSON, parsed
    and checked by ``tabledef.parse_table``, then ``create_table``."""
    from gateway.control.tabledef import parse_table

    return create_table(conn, ref, parse_table(definition))


def add_column_from_definition(
    conn: psycopg.Connection[Any], ref: str, table: str, definition: object
) -> dict[str, Any]:
    """``gateway table add-column`` and ``POST …/columns``: one column definition (the
    same fields as in a table definition), parsed by ``tabledef.parse_column``."""
    from gateway.control.tabledef import parse_column

    check_name(table, "table name")
    return add_column(conn, ref, table, parse_column(definition, "column"))


def set_row_access(
    conn: psycopg.Connection[Any],
    ref: str,
    table: str,
    *,
    row_access: str | None = None,
    owner_column: str | None = None,
) -> dict[str, Any]:
    """``gateway table set-access … --row-access owner --owner-column user_id``.

    One transaction: the registry row, the table's row-level security policies (as the
    project role) and, for a realtime table, its capture trigger (which stamps each
    change with the owner). The registry change reaches every instance's metadata cache
    through the registry triggers' NOTIFY.
    """
    if row_access is None and owner_column is None:
        raise ProvisioningError("nothing to change: give --row-access or --owner-column")
    with conn.transaction():
        project = find_project(conn, ref)
        registered = _registered_table(conn, project, table)
        columns = conn.execute(
            """
            SELECT name, data_type, is_primary_key FROM gateway.column_registry
             WHERE table_id = %s ORDER BY ordinal
            """,
            [registered["id"]],
        ).fetchall()
        new_owner = owner_column if owner_column is not None else registered["owner_column"]
        new_access = row_access if row_access is not None else registered["row_access"]
        try:
            new_owner, new_access = check_row_access(
                new_owner, new_access, {c["name"]: c["data_type"] for c in columns}
            )
        except DefinitionError as exc:
            raise ProvisioningError(str(exc)) from None
        conn.execute(
            "UPDATE gateway.table_registry SET owner_column = %s, row_access = %s WHERE id = %s",
            [new_owner, new_access, registered["id"]],
        )
        apply_row_policies(conn, project.schema_name, table, new_owner, new_access)
        if registered["realtime"] and new_owner != registered["owner_column"]:
            _drop_capture_trigger(conn, project, table)
            primary_key = [c["name"] for c in columns if c["is_primary_key"]]
            _create_capture_trigger(conn, project, table, primary_key, new_owner)
    return {
        "project_id": project.id,
        "table": table,
        "owner_column": new_owner,
        "row_access": new_access,
    }
