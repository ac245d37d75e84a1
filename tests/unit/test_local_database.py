"""The CLI finds the local database of ``make run``, and the development defaults.

No PostgreSQL here: a data root is a folder with a ``port`` file, a pid file and a
socket listening on that port, which is all ``find_local_database`` looks at. The real
thing (``gateway dev`` and the CLI beside it) is tests/cluster/test_dev_server.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import DatabaseResolver
from gateway.db.localdb import find_local_database, local_url
from gateway.settings import Settings, SettingsError


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither URL variable set; whatever the resolver puts in the environment is undone."""
    for name in ("DATABASE_URL", "DATABASE_DIRECT_URL", "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS"):
        monkeypatch.setenv(name, "")


def data_root(tmp_path: Path, port: int, *, pid_file: bool) -> Path:
    root = tmp_path / ".pgdata"
    (root / "data").mkdir(parents=True)
    (root / "port").write_text(str(port))
    if pid_file:
        (root / "data" / "postmaster.pid").write_text("12345\n")
    return root


def test_no_data_root_is_no_local_database(tmp_path: Path) -> None:
    assert find_local_database(tmp_path / ".pgdata") is None


def test_a_running_local_database_needs_the_pid_file_and_the_port(
    tmp_path: Path, listening_port: int
) -> None:
    running = find_local_database(data_root(tmp_path, listening_port, pid_file=True))
    assert running is not None and running.running
    assert running.url == local_url(listening_port)
    assert running.url == f"postgresql://postgres@127.0.0.1:{listening_port}/postgres"

    crashed = find_local_database(data_root(tmp_path / "crashed", 1, pid_file=True))
    assert crashed is not None and not crashed.running  # a stale pid file, a closed port
    stopped = find_local_database(data_root(tmp_path / "stopped", listening_port, pid_file=False))
    assert stopped is not None and not stopped.running  # another program's port


@pytest.mark.usefixtures("no_url")
def test_the_cli_uses_a_running_local_database_and_says_so_once(
    tmp_path: Path, listening_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    resolver = DatabaseResolver(data_root(tmp_path, listening_port, pid_file=True))
    first = resolver.settings()
    second = resolver.settings()
    url = local_url(listening_port)
    assert first.database_url == second.database_url == url
    assert capsys.readouterr().err == f"gateway: using the local database of make run: {url}\n"
    # the local database is the development setup: a loopback job endpoint is admitted ...
    assert first.jobs_allow_private_targets
    # ... except for a command that keeps the production defaults (gateway serve)
    assert not resolver.settings(development=False).jobs_allow_private_targets


@pytest.mark.usefixtures("no_url")
def test_a_stopped_local_database_is_named_with_what_to_do(
    tmp_path: Path, listening_port: int
) -> None:
    resolver = DatabaseResolver(data_root(tmp_path, listening_port, pid_file=False))
    with pytest.raises(SettingsError) as refused:
        resolver.settings()
    message = str(refused.value)
    assert "DATABASE_URL is not set" in message and "not running" in message
    assert "make run" in message and "\n" not in message


@pytest.mark.usefixtures("no_url")
def test_without_a_local_database_the_refusal_is_as_before(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^DATABASE_URL is not set: it must name"):
        DatabaseResolver(tmp_path / ".pgdata").settings()


def test_database_url_wins_over_the_local_database(
    tmp_path: Path,
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.delenv("GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS", raising=False)
    settings = DatabaseResolver(data_root(tmp_path, listening_port, pid_file=True)).settings()
    assert settings.database_url == "postgresql://elsewhere/db"
    assert not settings.jobs_allow_private_targets  # not the local database: production
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("value", "development", "allowed"),
    [
        (None, False, False),  # gateway serve
        (None, True, True),  # gateway dev
        ("", True, True),  # blank is unset
        ("false", True, False),  # set explicitly: as set
        ("true", False, True),
    ],
)
def test_private_job_targets_default_to_allowed_only_in_development(
    value: str | None, development: bool, allowed: bool
) -> None:
    env = {"DATABASE_URL": "postgresql://x/y"}
    if value is not None:
        env["GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS"] = value
    settings = Settings.from_env(env, development=development)
    assert settings.jobs_allow_private_targets is allowed
