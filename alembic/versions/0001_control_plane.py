"""Control plane: projects, API keys and the table/column registry.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "gateway"


def _created_at() -> sa.Column:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    )


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.execute(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC")
    op.create_table(
        "projects",
        sa.Column("id", UUID, primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("schema_name", sa.Text, nullable=False, unique=True),
        sa.Column("tier", sa.Text, nullable=False, server_default="free"),
        sa.Column("rate_limit_per_minute", sa.Integer, nullable=False, server_default="100"),
        sa.Column("requests_limit_daily", sa.BigInteger, nullable=False, server_default="10000"),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        _created_at(),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint(
            "tier IN ('free', 'starter', 'growth', 'scale', 'enterprise')",
            name="projects_tier_check",
        ),
        sa.CheckConstraint("status IN ('active', 'suspended')", name="projects_status_check"),
        sa.CheckConstraint("rate_limit_per_minute >= 0", name="projects_rate_limit_check"),
        sa.CheckConstraint("requests_limit_daily >= 0", name="projects_requests_limit_check"),
        sa.CheckConstraint("schema_name ~ '^p_[0-9a-f]{12}$'", name="projects_schema_name_check"),
        schema=SCHEMA,
    )
    op.create_table(
        "api_keys",
        sa.Column("id", UUID, primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column(
            "project_id",
            UUID,
            sa.ForeignKey(f"{SCHEMA}.projects.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("key_prefix", sa.String(12), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("key_type", sa.Text, nullable=False),
        sa.Column(
            "scopes", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{read,write}'")
        ),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        _created_at(),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("key_type IN ('public', 'server', 'admin')", name="api_keys_type_check"),
        sa.CheckConstraint("status IN ('active', 'revoked')", name="api_keys_status_check"),
        sa.CheckConstraint("key_hash ~ '^[0-9a-f]{64}$'", name="api_keys_hash_check"),
        schema=SCHEMA,
    )
    op.create_table(
        "table_registry",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column(
            "project_id",
            UUID,
            sa.ForeignKey(f"{SCHEMA}.projects.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("is_system_table", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("allow_client_read", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("allow_client_write", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("realtime", sa.Boolean, nullable=False, server_default=sa.text("false")),
        _created_at(),
        sa.UniqueConstraint("project_id", "name", name="table_registry_project_name_key"),
        schema=SCHEMA,
    )
    op.create_table(
        "column_registry",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column(
            "table_id",
            sa.BigInteger,
            sa.ForeignKey(f"{SCHEMA}.table_registry.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("data_type", sa.Text, nullable=False),
        sa.Column("is_nullable", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("is_primary_key", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("has_default", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("is_sensitive", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("allow_client_read", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("allow_client_write", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.UniqueConstraint("table_id", "name", name="column_registry_table_name_key"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("column_registry", schema=SCHEMA)
    op.drop_table("table_registry", schema=SCHEMA)
    op.drop_table("api_keys", schema=SCHEMA)
    op.drop_table("projects", schema=SCHEMA)
