"""SQLAlchemy Core definitions of the control-plane tables in schema ``gateway``.

Alembic's env reads ``metadata`` from here; the running gateway never uses SQLAlchemy
(it talks psycopg directly), so these definitions are the schema's documentation.
"""

from __future__ import annotations

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB, UUID

from gateway.auth.keys import KEY_STATUSES, KEY_TYPES

SCHEMA = "gateway"
PROJECT_STATUSES = ("active", "suspended")
ROW_ACCESS = ("all", "owner", "public_read")  # table_registry.row_access (0008)

metadata = MetaData(schema=SCHEMA)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> Column:
    return Column(
        "created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
    )


projects = Table(
    "projects",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=False, unique=True),
    Column("schema_name", Text, nullable=False, unique=True),
    # the project's plan (gateway.plans.name); the limit columns are per-project overrides:
    # NULL = the plan's value, -1 = unlimited (migration 0010, docs/quotas.md)
    Column(
        "tier",
        Text,
        ForeignKey("gateway.plans.name", onupdate="CASCADE", name="projects_tier_fkey"),
        nullable=False,
        server_default="free",
        index=True,
    ),
    Column("rate_limit_per_minute", Integer),
    Column("requests_limit_daily", BigInteger),
    Column("status", Text, nullable=False, server_default="active"),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint(_in("status", PROJECT_STATUSES), name="projects_status_check"),
    CheckConstraint("rate_limit_per_minute >= 0", name="projects_rate_limit_check"),
    CheckConstraint("requests_limit_daily >= -1", name="projects_requests_limit_check"),
    # quotas (0010): overrides of the plan's limits
    Column("bandwidth_limit_monthly", BigInteger),
    Column("db_size_limit_bytes", BigInteger),
    Column("job_runs_limit_monthly", BigInteger),
    Column("realtime_streams_limit", Integer),
    Column("job_timeout_ms_limit", Integer),  # 0016
    CheckConstraint("bandwidth_limit_monthly >= -1", name="projects_bandwidth_limit_check"),
    CheckConstraint("db_size_limit_bytes >= -1", name="projects_db_size_limit_check"),
    CheckConstraint("job_runs_limit_monthly >= -1", name="projects_job_runs_limit_check"),
    CheckConstraint("realtime_streams_limit >= -1", name="projects_realtime_streams_limit_check"),
    CheckConstraint(
        "job_timeout_ms_limit BETWEEN 1000 AND 1800000", name="projects_job_timeout_ms_limit_check"
    ),
    CheckConstraint("schema_name ~ '^p_[0-9a-f]{12}$'", name="projects_schema_name_check"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("key_prefix", String(12), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_type", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False, server_default=text("'{read,write}'")),
    Column("status", Text, nullable=False, server_default="active"),
    Column("expires_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    _now(),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint(_in("key_type", KEY_TYPES), name="api_keys_type_check"),
    CheckConstraint(_in("status", KEY_STATUSES), name="api_keys_status_check"),
    CheckConstraint("key_hash ~ '^[0-9a-f]{64}$'", name="api_keys_hash_check"),
)

table_registry = Table(
    "table_registry",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", Text, nullable=False),
    Column("is_system_table", Boolean, nullable=False, server_default=text("false")),
    Column("allow_client_read", Boolean, nullable=False, server_default=text("true")),
    Column("allow_client_write", Boolean, nullable=False, server_default=text("true")),
    Column("realtime", Boolean, nullable=False, server_default=text("false")),
    _now(),
    # rows that belong to users (migration 0008, docs/auth.md)
    Column("owner_column", Text),
    Column("row_access", Text, nullable=False, server_default=text("'all'")),
    UniqueConstraint("project_id", "name", name="table_registry_project_name_key"),
    CheckConstraint(_in("row_access", ROW_ACCESS), name="table_registry_row_access_check"),
    CheckConstraint(
        "row_access = 'all' OR owner_column IS NOT NULL",
        name="table_registry_owner_column_check",
    ),
)

column_registry = Table(
    "column_registry",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "table_id",
        BigInteger,
        ForeignKey("gateway.table_registry.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", Text, nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("data_type", Text, nullable=False),
    Column("is_nullable", Boolean, nullable=False, server_default=text("true")),
    Column("is_primary_key", Boolean, nullable=False, server_default=text("false")),
    Column("has_default", Boolean, nullable=False, server_default=text("false")),
    Column("is_sensitive", Boolean, nullable=False, server_default=text("false")),
    Column("allow_client_read", Boolean, nullable=False, server_default=text("true")),
    Column("allow_client_write", Boolean, nullable=False, server_default=text("true")),
    UniqueConstraint("table_id", "name", name="column_registry_table_name_key"),
)

# Written by the instances in COPY batches (gateway/request_log.py); no foreign keys, so a
# deleted project never cascades into the log. Retention: batched DELETE by the
# maintenance leader (alembic/versions/0004_request_log.py explains the choice).
request_log = Table(
    "request_log",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("project_id", UUID(as_uuid=True)),
    Column("api_key_id", UUID(as_uuid=True)),
    Column("instance_id", Text, nullable=False),
    Column("request_id", Text),
    Column("method", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("table_name", Text),
    Column("status_code", SmallInteger, nullable=False),
    Column("error_code", Text),
    Column("duration_ms", REAL, nullable=False),
    Column("response_size_bytes", Integer),
    Column("row_count", Integer),
    Column("client_ip", INET),
    Column("user_agent", Text),
    Index("request_log_created_at_idx", "created_at"),
    Index("request_log_project_created_at_idx", "project_id", "created_at"),
)

# --- admin API (issue 15) -------------------------------------------------------------
# One row per nonce of a signed admin request, inserted once (the primary key decides a
# replay cluster-wide) and deleted by the maintenance leader after ``expires_at``.
admin_nonces = Table(
    "admin_nonces",
    metadata,
    Column("nonce", Text, primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("admin_nonces_expires_at_idx", "expires_at"),
)

# --- end-user auth (alembic/versions/0008_auth.py, docs/auth.md) ---------------------------
# Tokens are stored only as the lower-case hex SHA-256 of the token string (token_hash).
auth_users = Table(
    "auth_users",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("email", Text, nullable=False),
    Column("password_hash", Text),
    Column("email_verified", Boolean, nullable=False, server_default=text("false")),
    Column("provider", Text, nullable=False, server_default="email"),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'")),
    _now(),
    Column("last_sign_in", DateTime(timezone=True)),
    Column("password_reset_required", Boolean, nullable=False, server_default=text("false")),
    UniqueConstraint("project_id", "email", name="auth_users_project_id_email_key"),
)

auth_session_families = Table(
    "auth_session_families",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "user_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.auth_users.id", ondelete="CASCADE"),
        nullable=False,
    ),
    _now(),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_reason", Text),
    Index("auth_session_families_user_id_idx", "user_id"),
)

auth_sessions = Table(
    "auth_sessions",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "user_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.auth_users.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("token_hash", Text, nullable=False, unique=True),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("ip", INET),
    Column("user_agent", Text),
    Column(
        "family_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.auth_session_families.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("via", Text, nullable=False, server_default="password"),
    Column("rotated_at", DateTime(timezone=True)),
    Index("auth_sessions_user_id_idx", "user_id"),
    Index("auth_sessions_expires_at_idx", "expires_at"),
    Index("auth_sessions_family_id_idx", "family_id"),
)

auth_magic_links = Table(
    "auth_magic_links",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("email", Text, nullable=False),
    Column("token_hash", Text, nullable=False, unique=True),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
    Index("auth_magic_links_expires_at_idx", "expires_at"),
)

auth_throttle = Table(
    "auth_throttle",
    metadata,
    Column("bucket", Text, primary_key=True),
    Column("window_start", DateTime(timezone=True), primary_key=True),
    Column("count", Integer, nullable=False, server_default="1"),
    Index("auth_throttle_window_start_idx", "window_start"),
)

# --- plans and quotas (migration 0010, docs/quotas.md) -----------------------------------

# One row per plan (tier); -1 = unlimited. Projects inherit every limit unless overridden;
# the view gateway.project_limits resolves plan + overrides (NULL = unlimited).
plans = Table(
    "plans",
    metadata,
    Column("name", Text, primary_key=True),
    Column("rate_limit_per_minute", Integer, nullable=False),
    Column("requests_per_day", BigInteger, nullable=False),
    Column("bandwidth_bytes_monthly", BigInteger, nullable=False),
    Column("db_size_bytes", BigInteger, nullable=False),
    Column("job_runs_monthly", BigInteger, nullable=False),
    Column("realtime_streams", Integer, nullable=False),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("name ~ '^[a-z0-9][a-z0-9_-]{0,31}$'", name="plans_name_check"),
    CheckConstraint("rate_limit_per_minute >= 0", name="plans_rate_limit_per_minute_check"),
    CheckConstraint("requests_per_day >= -1", name="plans_requests_per_day_check"),
    CheckConstraint("bandwidth_bytes_monthly >= -1", name="plans_bandwidth_bytes_monthly_check"),
    CheckConstraint("db_size_bytes >= -1", name="plans_db_size_bytes_check"),
    CheckConstraint("job_runs_monthly >= -1", name="plans_job_runs_monthly_check"),
    CheckConstraint("realtime_streams >= -1", name="plans_realtime_streams_check"),
    # 0016: the largest timeoutMs a job may have (never unlimited)
    Column("job_timeout_ms_max", Integer, nullable=False),
    CheckConstraint(
        "job_timeout_ms_max BETWEEN 1000 AND 1800000", name="plans_job_timeout_ms_max_check"
    ),
)

# The UTC month's bandwidth (batched adds by every instance) and the sampled database
# size (maintenance leader), one HOT-updatable row per project; gateway.admit joins it.
quota_usage = Table(
    "quota_usage",
    metadata,
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("bandwidth_month", Date, nullable=False),
    Column("bandwidth_bytes", BigInteger, nullable=False, server_default="0"),
    Column("db_size_bytes", BigInteger),
    Column("db_size_sampled_at", DateTime(timezone=True)),
    # created WITH (fillfactor = 50) by the migration
)

# --- background jobs (alembic/versions/0011_jobs.py; docs/jobs.md) ------------------------
# Created by raw SQL in the migration together with gateway.enqueue_job(),
# gateway.count_job_run() and gateway.claim_jobs(); these definitions document them.

job_projects = Table(
    "job_projects",
    metadata,
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("endpoint_url", Text),
    Column("signing_secret", Text),  # an HMAC key: must be usable, so not hashed
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", Text, nullable=False),
    Column("payload", JSONB, nullable=False, server_default=text("'null'::jsonb")),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("run_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    _now(),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("attempts_made", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False, server_default="3"),
    Column("timeout_ms", Integer, nullable=False, server_default="180000"),
    Column("concurrency_key", Text),
    Column("idempotency_key", Text),
    Column("schedule_id", UUID(as_uuid=True)),
    Column("result", Text),
    Column("error", Text),
    Column("locked_by", Text),
    Column("lease_until", DateTime(timezone=True)),
    Index(
        "jobs_pending_idx",
        "project_id",
        "run_at",
        "id",
        postgresql_where=text("status = 'pending'"),
    ),
    Index("jobs_active_idx", "lease_until", postgresql_where=text("status = 'active'")),
    Index("jobs_project_created_idx", "project_id", text("created_at DESC"), "id"),
    Index("jobs_finished_idx", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
)

job_keys = Table(
    "job_keys",
    metadata,
    Column("project_id", UUID(as_uuid=True), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("job_id", UUID(as_uuid=True), nullable=False),
)

job_idempotency = Table(
    "job_idempotency",
    metadata,
    Column("project_id", UUID(as_uuid=True), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("job_id", UUID(as_uuid=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

job_usage = Table(
    "job_usage",
    metadata,
    Column("project_id", UUID(as_uuid=True), primary_key=True),
    Column("month", Date, primary_key=True),
    Column("used", BigInteger, nullable=False, server_default="0"),
)

job_schedules = Table(
    "job_schedules",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", Text, nullable=False),
    Column("cron", Text, nullable=False),
    Column("payload", JSONB, nullable=False, server_default=text("'null'::jsonb")),
    Column("timezone", Text, nullable=False, server_default="UTC"),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("description", Text),
    Column("next_run_at", DateTime(timezone=True)),
    Column("last_run_at", DateTime(timezone=True)),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    UniqueConstraint("project_id", "name"),
)

job_schedule_fires = Table(
    "job_schedule_fires",
    metadata,
    Column(
        "schedule_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.job_schedules.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("fire_time", DateTime(timezone=True), primary_key=True),
    Column("job_id", UUID(as_uuid=True)),
    _now(),
)
