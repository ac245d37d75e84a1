"""SQLAlchemy Core definitions of the cell directory's tables (migration 0018), used in the
control database only (docs/cells.md). Apart from ``models.py`` to keep each module one
readable concern; alembic's env imports both onto the same ``metadata``.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, DateTime, ForeignKey, Integer, Table, Text, text
from sqlalchemy.dialects.postgresql import JSONB, UUID

from gateway.db.models import _in, _now, metadata

cells = Table(
    "cells",
    metadata,
    Column("name", Text, primary_key=True),
    Column("database_url", Text),
    Column("direct_url", Text),
    Column("max_connections", Integer),
    Column("status", Text, nullable=False, server_default="active"),
    _now(),
    CheckConstraint("name ~ '^[a-z][a-z0-9_-]{0,31}$'", name="cells_name_check"),
    CheckConstraint("max_connections > 0", name="cells_max_connections_check"),
    CheckConstraint(_in("status", ("active", "draining")), name="cells_status_check"),
    CheckConstraint("(name = 'home') = (database_url IS NULL)", name="cells_home_check"),
)

project_cells = Table(
    "project_cells",
    metadata,
    Column("project_id", UUID(as_uuid=True), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("cell", Text, ForeignKey("gateway.cells.name"), nullable=False, index=True),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("cell <> 'home'", name="project_cells_not_home_check"),
)

key_cells = Table(
    "key_cells",
    metadata,
    Column("key_hash", Text, primary_key=True),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("gateway.project_cells.project_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    CheckConstraint("key_hash ~ '^[0-9a-f]{64}$'", name="key_cells_hash_check"),
)

cell_moves = Table(
    "cell_moves",
    metadata,
    Column("project_id", UUID(as_uuid=True), primary_key=True),
    Column("source", Text, ForeignKey("gateway.cells.name"), nullable=False),
    Column("target", Text, ForeignKey("gateway.cells.name"), nullable=False),
    Column("state", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("source <> target", name="cell_moves_distinct_check"),
)
