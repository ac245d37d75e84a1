"""Alembic environment: online migrations only, over psycopg, on the direct URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool, text

import gateway.db.cell_models  # noqa: F401  (the cell directory's tables, on metadata)
from gateway.db.migrate import sqlalchemy_url
from gateway.db.models import SCHEMA, metadata

config = context.config


def database_url() -> str:
    url = (
        config.attributes.get("database_url")
        or os.environ.get("DATABASE_DIRECT_URL")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise SystemExit("DATABASE_DIRECT_URL or DATABASE_URL must be set to run migrations")
    return sqlalchemy_url(url)


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=SCHEMA,
            include_schemas=True,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
