"""Session families against a real PostgreSQL: the refresh/sign-out race and the
migration of existing sessions into families (migration 0015)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from gateway.auth import sessions, store
from gateway.auth.tokens import new_token, token_hash

ROUNDS = 60

# the admission rule (gateway.admission_session): session and family unrevoked, unexpired
VALID_SQL = """
SELECT count(*) AS n FROM gateway.auth_sessions s
  JOIN gateway.auth_session_families f ON f.id = s.family_id
 WHERE s.user_id = %s AND s.revoked_at IS NULL AND f.revoked_at IS NULL
   AND s.expires_at > now()
"""


def test_sign_out_racing_refreshes_leaves_no_valid_session(
    pg_url: str, make_project: Any, db: psycopg.Connection[dict[str, Any]]
) -> None:
    """Round after round, two refreshes of the same token (in their grace) race a sign-out
    (local and global in turn) on three connections: whatever order PostgreSQL picks, no
    session of the family stays valid — a refresh that got in first mints a session of a
    family that then ends, one that came after mints nothing — and nothing deadlocks (with
    the sessions locked before the family, 1 run in 2 did)."""
    project_id = make_project()["id"]

    async def run() -> list[int]:
        conns = [await psycopg.AsyncConnection.connect(pg_url, autocommit=True) for _ in range(3)]
        left = []
        try:
            for round_ in range(ROUNDS):
                token = new_token()
                user = await store.sign_up(
                    conns[0],
                    project_id,
                    f"race-{round_}-{new_token()[:8].lower()}@example.test",
                    "not-a-real-hash",
                    {},
                    token_hash(token),
                    3600,
                    None,
                    None,
                )
                assert user is not None

                async def refresh(conn: psycopg.AsyncConnection[Any], token: str = token) -> None:
                    await sessions.refresh(
                        conn,
                        project_id,
                        token_hash(token),
                        token_hash(new_token()),
                        3600,
                        30,
                        None,
                        None,
                    )

                await asyncio.gather(
                    refresh(conns[0]),
                    sessions.sign_out(
                        conns[1], project_id, token_hash(token), everywhere=round_ % 2 == 1
                    ),
                    refresh(conns[2]),
                )
                left.append(db.execute(VALID_SQL, [user["id"]]).fetchone()["n"])  # type: ignore[index]
        finally:
            for conn in conns:
                await conn.close()
        return left

    assert asyncio.run(run()) == [0] * ROUNDS
