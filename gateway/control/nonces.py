"""Single use of a signed admin request's nonce, cluster-wide, in PostgreSQL.

``claim`` is ONE statement: an insert into ``gateway.admin_nonces`` whose primary key is
the nonce. Of any number of instances receiving the same signed request, exactly one
inserts the row; the others find the conflict and answer 401. Rows live until the
request's timestamp plus ``NONCE_TTL_S`` (past the ±120 s window, after which the
timestamp alone refuses the request) and are deleted by the maintenance leader.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from gateway.control.signing import NONCE_TTL_S

CLAIM = """
    INSERT INTO gateway.admin_nonces (nonce, expires_at)
    VALUES (%s, to_timestamp(%s) + make_interval(secs => %s))
    ON CONFLICT (nonce) DO NOTHING
"""
CLEANUP_BATCH = 10_000


async def claim(conn: AsyncConnection[Any], nonce: str, timestamp: int) -> bool:
    """True when this is the nonce's first use anywhere in the cluster."""
    cur = await conn.execute(CLAIM, (nonce, timestamp, NONCE_TTL_S))
    return cur.rowcount == 1


async def delete_expired(conn: AsyncConnection[Any]) -> int:
    """The maintenance job: expired nonces, at most ``CLEANUP_BATCH`` per tick."""
    cur = await conn.execute(
        """
        DELETE FROM gateway.admin_nonces WHERE nonce IN (
            SELECT nonce FROM gateway.admin_nonces WHERE expires_at < now() LIMIT %s)
        """,
        (CLEANUP_BATCH,),
    )
    return cur.rowcount


def register_maintenance(maintenance: Any) -> None:
    """Add the cleanup to the maintenance leader's jobs (``ops/maintenance.py``).

    Like the request-log retention, the DELETE commits on its own pooled connection, not
    in the leader's transaction: an open xid would hold realtime delivery back."""

    async def cleanup(_leader_conn: AsyncConnection[Any]) -> int:
        async with maintenance.pool.connection() as own:
            return await delete_expired(own)

    maintenance.register("admin_nonce_cleanup", cleanup, every_s=60.0)
