"""The admin API's request models (pydantic v2): they validate the bodies AND are the
OpenAPI schemas, so the document can't drift from what the API accepts.

They check shape and ranges only (types, required fields, unknown fields refused,
lengths, enumerations). The rules that the CLI shares — a table definition's types,
defaults and primary key, a project's existence, a confirmation matching the name — stay
in ``tabledef`` and ``projects``/``keys``/``tables``: a body that passes here is handed, as a plain
dict, to the very function the CLI calls. Bodies are validated in strict mode (``"5"``
is not an integer and ``"yes"`` not a boolean); query strings in lax mode (they are
text by nature).

Pure: no psycopg, no I/O (the bounds it shares with ``projects`` are checked equal by
``tests/unit/test_admin_models.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

# the same bounds as projects.py's (a unit test checks): this module stays pure, no psycopg
MAX_LIMIT = 2**31 - 1
PAGE_MAX = 100
PROJECT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
TEN_YEARS_S = 10 * 365 * 86400

# a plan (tier) name: any plan in gateway.plans (projects.py checks it exists); the
# pattern is gateway.quotas.plans.PLAN_NAME_RE (a unit test checks)
PLAN_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
INT32_MAX = 2**31 - 1
OVERRIDE_MAX = 2**62  # = projects.set_limits' bound
UNLIMITED = -1
# the jobs API's list parameters (gateway.jobs.rules, a unit test checks)
JOB_STATUSES = ("pending", "active", "completed", "failed", "delayed", "cancelled")
JOB_ORDER_BY = ("createdAt", "runAt", "finishedAt")
JOB_LIST_MAX = 100
JOB_OFFSET_MAX = 100_000
JOB_NAME_MAX = 100


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    def as_args(self) -> dict[str, Any]:
        """The fields the client sent, for the provisioning function (its defaults rule)."""
        return self.model_dump(exclude_unset=True)


class ProjectCreate(Body):
    """Create a project: its schema, its role, its limits."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "demo-app", "tier": "free", "rate_limit_per_minute": 100}]
        }
    )
    name: str = Field(pattern=PROJECT_NAME_PATTERN, description="unique; letters, digits, _ . -")
    cell: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="the cell to place it on (default: the active cell with the fewest projects)",
    )
    tier: str = Field(
        default="free", pattern=PLAN_NAME_PATTERN, description="a plan in gateway.plans"
    )
    rate_limit_per_minute: int | None = Field(default=None, ge=0, le=MAX_LIMIT)
    requests_per_day: int | None = Field(default=None, ge=0, le=MAX_LIMIT)


def _override(description: str, *, high: int = OVERRIDE_MAX, low: int = UNLIMITED) -> Any:
    unlimited = "-1 = unlimited, " if low <= UNLIMITED else ""
    return Field(
        default=None,
        ge=low,
        le=high,
        description=f"{description}; {unlimited}null = the plan's value again",
    )


class ProjectUpdate(Body):
    """Change a project's plan (``tier``), status or limit overrides; give at least one
    field. The limits are ``gateway project set-limits``'s: each overrides the plan's
    value; ``null`` drops the override (inherit the plan again), a field left out is
    unchanged."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"rate_limit_per_minute": 500, "tier": "starter"},
                {"bandwidth_bytes_monthly": 10 * 1024**3, "job_runs_monthly": -1},
                {"db_size_bytes": None, "realtime_streams": 50, "status": "active"},
            ]
        }
    )
    rate_limit_per_minute: int | None = _override(
        "requests per minute (never unlimited)", high=MAX_LIMIT, low=0
    )
    requests_per_day: int | None = _override("requests per UTC day")
    bandwidth_bytes_monthly: int | None = _override("response bytes per calendar month")
    db_size_bytes: int | None = _override("the project's schema size in bytes")
    job_runs_monthly: int | None = _override("job runs per calendar month")
    realtime_streams: int | None = _override("concurrent realtime streams", high=INT32_MAX)
    job_timeout_ms_max: int | None = _override(
        "the largest timeoutMs of a job (never unlimited)", high=1_800_000, low=1_000
    )
    status: Literal["active", "suspended"] | None = None
    tier: str | None = Field(
        default=None, pattern=PLAN_NAME_PATTERN, description="move to this plan (gateway.plans)"
    )

    def limit_overrides(self) -> dict[str, int | None]:
        """The limit fields the client sent (null included: inherit)."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS if name in self.model_fields_set}


# = gateway.quotas.plans.PLAN_FIELDS (a unit test checks)
LIMIT_FIELDS: tuple[str, ...] = (
    "rate_limit_per_minute",
    "requests_per_day",
    "bandwidth_bytes_monthly",
    "db_size_bytes",
    "job_runs_monthly",
    "realtime_streams",
    "job_timeout_ms_max",
)


class ProjectDelete(Body):
    """Deleting drops the project's schema, tables and role: ``confirm`` must repeat the
    project's name."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"confirm": "demo-app"}]})
    confirm: str = Field(max_length=200)


class ProjectListQuery(BaseModel):
    """Paging: ``limit`` (1 to 100, default 20) projects from ``offset``, oldest first."""

    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=20, ge=1, le=PAGE_MAX)
    offset: int = Field(default=0, ge=0, le=MAX_LIMIT)


class PageQuery(BaseModel):
    """Paging: ``limit`` (1 to 100, default 20) from ``offset``, oldest first."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"limit": 20, "offset": 0}]}
    )
    limit: int = Field(default=20, ge=1, le=PAGE_MAX)
    offset: int = Field(default=0, ge=0, le=MAX_LIMIT)


class JobListQuery(BaseModel):
    """The jobs API's list filters (``GET /v1/inhouse/jobs``), same names and bounds;
    the jobs API's parser (``gateway.jobs.rules.parse_list``) reads them afterwards."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"status": "failed", "limit": 10, "orderDir": "desc"}]},
    )
    name: str | None = Field(default=None, max_length=JOB_NAME_MAX)
    status: (
        Literal["pending", "active", "completed", "failed", "delayed", "cancelled", "all"] | None
    ) = None
    limit: int = Field(default=20, ge=1, le=JOB_LIST_MAX)
    offset: int = Field(default=0, ge=0, le=JOB_OFFSET_MAX)
    orderBy: Literal["createdAt", "runAt", "finishedAt"] = "createdAt"
    orderDir: Literal["asc", "desc"] = "desc"

    def as_params(self) -> dict[str, str]:
        """The query string the jobs API's parser takes (text, as it came)."""
        return {k: str(v) for k, v in self.model_dump(exclude_none=True).items()}


class KeyCreate(Body):
    """Create an API key; the answer holds the key itself, shown this once."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"type": "server", "scopes": ["read", "write"]}]}
    )
    type: Literal["public", "server"]
    scopes: list[Literal["read", "write"]] | None = Field(default=None, min_length=1, max_length=2)
    expires_in: int | None = Field(default=None, ge=1, le=TEN_YEARS_S, description="seconds")


class ColumnDefinition(Body):
    """A column, as in the CLI's table definition file (``gateway table create --file``)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "priority", "type": "integer", "nullable": True}]}
    )
    name: str = Field(pattern=NAME_PATTERN)
    type: str = Field(
        max_length=40,
        description="text integer bigint smallint boolean numeric real double precision "
        "uuid date timestamptz jsonb, or an array of a scalar one (text[])",
    )
    primary_key: bool = False
    identity: bool = False
    nullable: bool | None = Field(default=None, description="default: not a primary key")
    default: JsonValue = Field(
        default=None, description="a JSON literal, or now() / gen_random_uuid()"
    )
    sensitive: bool = False
    client_read: bool = True
    client_write: bool = True


class TableDefinition(Body):
    """A table, exactly the JSON that ``gateway table create --file`` reads."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "notes",
                    "client_read": True,
                    "client_write": True,
                    "columns": [
                        {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
                        {"name": "body", "type": "text", "nullable": False},
                        {"name": "created_at", "type": "timestamptz", "default": "now()"},
                    ],
                }
            ]
        }
    )
    name: str = Field(pattern=NAME_PATTERN)
    columns: list[ColumnDefinition] = Field(min_length=1, max_length=200)
    client_read: bool = True
    client_write: bool = True
    realtime: bool = True


class AccessUpdate(Body):
    """A table's client flags, or one column's (with ``column``; ``sensitive`` is a column
    flag)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"client_write": False}, {"column": "title", "sensitive": True}]
        }
    )
    column: str | None = Field(default=None, pattern=NAME_PATTERN)
    client_read: bool | None = None
    client_write: bool | None = None
    sensitive: bool | None = None


class RealtimeUpdate(Body):
    """Turn realtime capture (the change-log trigger) on or off for a table."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"enabled": False}]})
    enabled: bool


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ProjectCreate,
    ProjectUpdate,
    ProjectDelete,
    ProjectListQuery,
    PageQuery,
    JobListQuery,
    KeyCreate,
    ColumnDefinition,
    TableDefinition,
    AccessUpdate,
    RealtimeUpdate,
)
