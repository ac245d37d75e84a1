"""Helpers for the owner-rows tests: an owner table and end users with sessions.

Sessions are created directly in SQL, exactly as the auth API stores them (only the
SHA-256 of the token, ``gateway.auth.tokens``), so these tests don't depend on the auth
routes; the browser test signs in through them when they are there.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg

from gateway.auth.tokens import new_token, token_hash

NOTES_TABLE: dict[str, Any] = {
    "name": "notes",
    "columns": [
        {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
        {"name": "user_id", "type": "uuid"},
        {"name": "body", "type": "text"},
        {"name": "secret", "type": "text", "client_write": False},
    ],
    "owner_column": "user_id",
    "row_access": "owner",
}


def make_user(pg_url: str, project_id: str, email: str | None = None) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO gateway.auth_users (project_id, email) VALUES (%s, %s) RETURNING id",
            [project_id, email or f"u-{uuid.uuid4().hex[:10]}@example.com"],
        ).fetchone()
    assert row is not None
    return str(row[0])


def make_session(pg_url: str, project_id: str, user_id: str, ttl_s: int = 3600) -> str:
    """A session token for the user (shown once; only its hash is stored)."""
    token = new_token()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            """
            WITH f AS (
                INSERT INTO gateway.auth_session_families (project_id, user_id)
                VALUES (%s, %s) RETURNING id, project_id, user_id
            )
            INSERT INTO gateway.auth_sessions
                   (project_id, user_id, family_id, token_hash, expires_at)
            SELECT project_id, user_id, id, %s, now() + make_interval(secs => %s) FROM f
            """,
            [project_id, user_id, token_hash(token), ttl_s],
        )
    return token


def revoke_sessions(pg_url: str, user_id: str) -> None:
    """What ``gateway auth logout`` does: every session of the user stops working."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE gateway.auth_sessions SET revoked_at = now() WHERE user_id = %s",
            [user_id],
        )


def headers(key: str, session: str | None = None) -> dict[str, str]:
    out = {"x-api-key": key}
    if session is not None:
        out["Authorization"] = f"Bearer {session}"
    return out


def owner_project(make_project: Any) -> dict[str, Any]:
    """A new project whose table is the owner table ``notes``."""
    return make_project(table=NOTES_TABLE)


def insert_note(gateway: str, key: str, session: str, body: str) -> None:
    """Another user writes a note through the API (the browser must not see it)."""
    answer = httpx.post(
        gateway + "/v1/inhouse/db/query",
        json={"query": {"operation": "insert", "table": "notes", "data": {"body": body}}},
        headers=headers(key, session),
    )
    assert answer.status_code == 200, answer.text
