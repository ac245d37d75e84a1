"""Fixtures of the cluster tier: processes beside the gateway's own (PgBouncer)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.pgbouncer import PgBouncer, find_binary


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
