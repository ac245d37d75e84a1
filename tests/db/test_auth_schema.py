"""The auth schema (migration 0008) and the token helper."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import psycopg

from gateway.auth.tokens import new_token, token_hash


def test_tokens_are_32_random_bytes_base64url_and_hash_is_hex_sha256() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert len(base64.urlsafe_b64decode(token + "=")) == 32
        assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest()
        assert token_hash(token) == token_hash(token).lower()


def test_auth_tables_have_the_agreed_columns(db: psycopg.Connection[dict[str, Any]]) -> None:
    rows = db.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'gateway' AND table_name IN ('auth_users', 'auth_sessions')"
    ).fetchall()
    columns = {(r["table_name"], r["column_name"]) for r in rows}
    for name in [
        "id",
        "project_id",
        "email",
        "password_hash",
        "email_verified",
        "provider",
        "metadata",
        "created_at",
        "last_sign_in",
        "password_reset_required",
    ]:
        assert ("auth_users", name) in columns
    for name in [
        "id",
        "project_id",
        "user_id",
        "token_hash",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "ip",
        "user_agent",
    ]:
        assert ("auth_sessions", name) in columns
