"""Creating, revoking, listing and regenerating API keys: ``gateway key`` and the admin
API's ``/projects/{project}/keys`` routes.

Only a key's hash and its visible prefix are stored; the secret is returned once, by
``create_key`` and ``regenerate_key``, and never again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg

from gateway.auth import keys as auth
from gateway.control.errors import ConflictError, NotFoundError, ProvisioningError
from gateway.control.projects import find_project

SCOPES = ("read", "write")


def create_key(
    conn: psycopg.Connection[Any],
    ref: str,
    *,
    key_type: str,
    scopes: list[str] | None = None,
    expires_in_s: int | None = None,
) -> dict[str, Any]:
    if key_type not in ("public", "server"):
        raise ProvisioningError("--type must be public or server")
    scopes = list(dict.fromkeys(scopes or list(SCOPES)))
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ProvisioningError(f"--scopes must be a comma-separated subset of {','.join(SCOPES)}")
    if expires_in_s is not None and not 0 < expires_in_s <= 10 * 365 * 86400:
        raise ProvisioningError("--expires-in must be a positive number of seconds (max 10 years)")
    with conn.transaction():
        project = find_project(conn, ref)
        new_key, row = _insert_key(conn, project.id, key_type, scopes, expires_in_s)
    assert row is not None
    expires_at: dt.datetime | None = row["expires_at"]
    return {
        "id": str(row["id"]),
        "key": new_key.key,
        "prefix": new_key.prefix,
        "type": key_type,
        "scopes": scopes,
        "expires_at": expires_at.isoformat() if expires_at else None,
        "project_id": project.id,
    }


KEY_INSERT = """
    INSERT INTO gateway.api_keys (project_id, key_prefix, key_hash, key_type, scopes, expires_at)
    VALUES (%s, %s, %s, %s, %s,
            CASE WHEN %s::int IS NULL THEN NULL ELSE now() + make_interval(secs => %s::int) END)
    RETURNING id, expires_at
"""
PREFIX_ATTEMPTS = 20


def _insert_key(
    conn: psycopg.Connection[Any],
    project_id: str,
    key_type: str,
    scopes: list[str],
    expires_in_s: int | None,
) -> tuple[auth.NewKey, dict[str, Any]]:
    """Insert a fresh key, drawing again when its visible prefix is already taken.

    The 12-character prefix holds only three random characters after ``sheen_pk_``, and
    the contract keeps it unique, so collisions are expected once there are a few
    hundred keys; each draw runs in a savepoint so a collision costs one retry.
    """
    for _ in range(PREFIX_ATTEMPTS):
        new_key = auth.generate_key(key_type)
        params = [project_id, new_key.prefix, new_key.key_hash, key_type, scopes]
        try:
            with conn.transaction():
                row = conn.execute(KEY_INSERT, [*params, expires_in_s, expires_in_s]).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "api_keys_key_prefix_key":
                continue
            raise
        assert row is not None
        return new_key, row
    raise ProvisioningError("could not find a free key prefix; try again")


def _key_id(key_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(key_id)
    except ValueError:
        raise ProvisioningError(f"{key_id!r} is not a key id (a UUID)", field="key_id") from None


def revoke_key(
    conn: psycopg.Connection[Any], key_id: str, *, project: str | None = None
) -> dict[str, Any]:
    """Revoke a key (idempotent). ``project`` (id or name), when given, must own the key."""
    parsed = _key_id(key_id)
    with conn.transaction():
        owner = find_project(conn, project).id if project is not None else None
        row = conn.execute(
            """
            UPDATE gateway.api_keys
               SET status = 'revoked', revoked_at = coalesce(revoked_at, now())
             WHERE id = %s AND (%s::uuid IS NULL OR project_id = %s::uuid)
            RETURNING id, status
            """,
            [parsed, owner, owner],
        ).fetchone()
    if row is None:
        raise NotFoundError(f"no key with id {key_id}")
    assert row["status"] in auth.KEY_STATUSES
    return {"id": str(row["id"]), "status": row["status"]}


def _key_json(row: dict[str, Any]) -> dict[str, Any]:
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(row["id"]),
        "prefix": row["key_prefix"],
        "type": row["key_type"],
        "scopes": list(row["scopes"]),
        "status": row["status"],
        "created_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]),
        "last_used_at": iso(row["last_used_at"]),
        "revoked_at": iso(row["revoked_at"]),
    }


def list_keys(conn: psycopg.Connection[Any], ref: str) -> dict[str, Any]:
    """The project's keys without any secret: the visible prefix and the metadata."""
    project = find_project(conn, ref)
    rows = conn.execute(
        "SELECT * FROM gateway.api_keys WHERE project_id = %s ORDER BY created_at, id",
        [project.id],
    ).fetchall()
    return {"project_id": project.id, "keys": [_key_json(r) for r in rows]}


def regenerate_key(
    conn: psycopg.Connection[Any], key_id: str, *, project: str | None = None
) -> dict[str, Any]:
    """Revoke a key and create its replacement (same project, type and scopes, and the same
    lifetime counted from now if it had one) in one transaction; the new secret is
    returned once. A revoked key can't be regenerated (create a new one instead)."""
    parsed = _key_id(key_id)
    with conn.transaction():
        owner = find_project(conn, project).id if project is not None else None
        old = conn.execute(
            """
            SELECT *, extract(epoch FROM expires_at - created_at)::int AS lifetime_s
              FROM gateway.api_keys
             WHERE id = %s AND (%s::uuid IS NULL OR project_id = %s::uuid)
               FOR UPDATE
            """,
            [parsed, owner, owner],
        ).fetchone()
        if old is None:
            raise NotFoundError(f"no key with id {key_id}")
        if old["status"] != "active":
            raise ConflictError(f"key {key_id} is revoked: create a new key instead")
        if old["key_type"] not in ("public", "server"):
            raise ConflictError(f"key {key_id} is an {old['key_type']} key: not regenerated here")
        lifetime = old["lifetime_s"]
        lifetime = max(1, int(lifetime)) if lifetime is not None else None
        conn.execute(
            "UPDATE gateway.api_keys SET status = 'revoked', revoked_at = now() WHERE id = %s",
            [parsed],
        )
        project_id = str(old["project_id"])
        scopes = list(old["scopes"])
        new_key, row = _insert_key(conn, project_id, old["key_type"], scopes, lifetime)
    expires_at: dt.datetime | None = row["expires_at"]
    return {
        "id": str(row["id"]),
        "key": new_key.key,
        "prefix": new_key.prefix,
        "type": old["key_type"],
        "scopes": scopes,
        "expires_at": expires_at.isoformat() if expires_at else None,
        "project_id": project_id,
        "replaces": str(parsed),
    }
