"""Fixtures of the cluster tier: gateway processes shared by a module, PgBouncer, and
the HTTP receiver that job deliveries go to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.harness import ClusterStarter, GatewayCluster
from tests.support.jobs_receiver import Receiver
from tests.support.pgbouncer import PgBouncer, find_binary
from tests.support.smtp import Inbox, start_smtp


@pytest.fixture(scope="module")
def module_cluster(
    pg_url: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterStarter]:
    """Gateway processes shared by one module's tests (start-up costs seconds):
    ``module_cluster(3, env={...})`` in the module's own fixture, stopped after its last
    test. Their logs go to a folder named after the module."""
    start = ClusterStarter(pg_url, tmp_path_factory.mktemp(request.module.__name__.split(".")[-1]))
    try:
        yield start
    finally:
        start.stop_all()


@pytest.fixture(scope="module")
def server(module_cluster: ClusterStarter) -> GatewayCluster:
    """One instance with the default settings, shared by a module's tests."""
    return module_cluster(1)


@pytest.fixture
def client(server: GatewayCluster) -> Iterator[httpx.Client]:
    """An HTTP client on ``server``'s data routes (``/v1/inhouse/db``)."""
    with httpx.Client(base_url=server.urls[0] + "/v1/inhouse/db", timeout=30) as c:
        yield c


@pytest.fixture
def pgbouncer(pg_url: str) -> Iterator[PgBouncer]:
    """A running PgBouncer (transaction mode) in front of the session's PostgreSQL."""
    if find_binary() is None:
        pytest.skip("pgbouncer not installed: apt-get install pgbouncer")
    bouncer = PgBouncer(pg_url)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pgbouncer_url(pgbouncer: PgBouncer) -> str:
    """The URL of a PgBouncer in transaction mode in front of ``pg_url``."""
    return pgbouncer.url


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A job receiver (HTTP, in the test process) shared by a module's tests; each
    project registers its signing secret in ``receiver.secrets``."""
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Inbox, int, Path]]:
    """A real SMTP server (STARTTLS, AUTH LOGIN) shared by a module's tests."""
    with start_smtp(tmp_path_factory.mktemp("smtp")) as running:
        yield running
