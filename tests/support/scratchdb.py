"""A throwaway database on the test server, for tests that run migrations up and down."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


@contextmanager
def scratch_database(pg_url: str, prefix: str) -> Iterator[str]:
    """Create a fresh database, yield its URL (same server and credentials), drop it after
    (with FORCE: a gateway process a test started may still hold connections)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urllib.parse.urlsplit(pg_url)
    try:
        yield urllib.parse.urlunsplit(parts._replace(path="/" + name))
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
