"""The example project's schema for the compiler/executor tests, on the session's database."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def project_db(pg_url: str) -> str:
    """The example project's schema, role and tables (see ``tests/example_catalog.py``)."""
    import psycopg

    from tests.support.example_catalog import ROLE, SCHEMA, TODOS_DDL

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        conn.execute(f"CREATE ROLE {ROLE} NOLOGIN")
        conn.execute(f"CREATE SCHEMA {SCHEMA} AUTHORIZATION {ROLE}")
        conn.execute(f"GRANT {ROLE} TO CURRENT_USER")
        conn.execute(f"SET ROLE {ROLE}")
        conn.execute(TODOS_DDL)
        conn.execute("RESET ROLE")
        # A table the project role may not touch, to prove statements run as that role.
        conn.execute("CREATE TABLE IF NOT EXISTS public.outside (x int)")
        conn.execute("REVOKE ALL ON public.outside FROM PUBLIC")
    return pg_url
