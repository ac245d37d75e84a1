"""Operator actions on a project's end users, for the ``gateway auth`` commands.

Synchronous psycopg on the direct URL, one transaction per command (like provisioning):
a refused import leaves nothing behind. Logging a user out revokes every session row, and
because the data routes and the auth API read ``revoked_at`` on every request (nothing is
cached), it takes effect on the next request on every instance.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from gateway.auth import rules
from gateway.auth.passwords import is_known_format
from gateway.auth.sessions import REVOKE_USER_SQL
from gateway.control.errors import NotFoundError, ProvisioningError
from gateway.control.projects import Project, find_project

MAX_IMPORT_LINE = 64 * 1024
PROVIDERS = ("email", "magic_link")


class AuthAdminError(ProvisioningError):
    """Refused input: one line on stderr, exit status 2 (as every provisioning error)."""


class UserNotFoundError(AuthAdminError, NotFoundError):
    """No such user in the project: exit status 2 for the CLI, 404 for the admin API."""


def _user_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise AuthAdminError(f"{value!r} is not a user id (a UUID)") from None


def _user(conn: psycopg.Connection[Any], project: Project, user_id: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, email FROM gateway.auth_users WHERE project_id = %s AND id = %s",
        [project.id, _user_id(user_id)],
    ).fetchone()
    if row is None:
        raise UserNotFoundError(f"no user {user_id} in project {project.name}", field="user_id")
    return row


def list_users(
    conn: psycopg.Connection[Any], ref: str, *, limit: int | None = None, offset: int = 0
) -> dict[str, Any]:
    """A project's users, oldest first; ``limit`` None = all of them (the CLI's default),
    else one page from ``offset`` (the admin API pages). ``total`` counts them all."""
    project = find_project(conn, ref)
    rows = conn.execute(
        """
        SELECT u.id, u.project_id, u.email, u.email_verified, u.provider, u.metadata,
               u.created_at, u.last_sign_in, u.password_reset_required,
               (SELECT count(*) FROM gateway.auth_sessions s
                 WHERE s.user_id = u.id AND s.revoked_at IS NULL AND s.expires_at > now())
                   AS active_sessions,
               count(*) OVER () AS total
          FROM gateway.auth_users u WHERE u.project_id = %s
         ORDER BY u.created_at, u.email, u.id
         LIMIT %s OFFSET %s
        """,
        [project.id, limit, offset],
    ).fetchall()
    users = [
        {
            **rules.user_json(r),
            "passwordResetRequired": r["password_reset_required"],
            "activeSessions": r["active_sessions"],
        }
        for r in rows
    ]
    if rows:
        total = int(rows[0]["total"])
    elif offset == 0:
        total = 0
    else:  # past the end: count them for the pager
        count = conn.execute(
            "SELECT count(*) AS n FROM gateway.auth_users WHERE project_id = %s", [project.id]
        ).fetchone()
        total = int(count["n"]) if count else 0
    return {"project": project.name, "projectId": project.id, "users": users, "total": total}


def logout(conn: psycopg.Connection[Any], ref: str, user_id: str) -> dict[str, Any]:
    with conn.transaction():
        project = find_project(conn, ref)
        user = _user(conn, project, user_id)
        cur = conn.execute(REVOKE_USER_SQL, {"user": user["id"], "reason": "admin_logout"})
    return {"userId": str(user["id"]), "email": user["email"], "revokedSessions": cur.rowcount}


def force_reset(conn: psycopg.Connection[Any], ref: str, user_id: str) -> dict[str, Any]:
    """The original's admin action: clear the password and end every session family. The
    user signs in again by magic link, and within 10 minutes of it may set a new password
    (``POST /auth/password`` without the current one)."""
    with conn.transaction():
        project = find_project(conn, ref)
        user = _user(conn, project, user_id)
        conn.execute(
            "UPDATE gateway.auth_users SET password_hash = NULL, password_reset_required = true "
            "WHERE id = %s",
            [user["id"]],
        )
        cur = conn.execute(REVOKE_USER_SQL, {"user": user["id"], "reason": "force_reset"})
    return {
        "userId": str(user["id"]),
        "email": user["email"],
        "passwordResetRequired": True,
        "revokedSessions": cur.rowcount,
    }


def _timestamp(value: Any, where: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise AuthAdminError(f"{where}: created_at must be an ISO 8601 string")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AuthAdminError(f"{where}: created_at {value[:40]!r} is not ISO 8601") from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    try:  # before year 1 or after 9999 in UTC: stored, it could never be read back
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        raise AuthAdminError(f"{where}: created_at is outside the years 1 to 9999") from None


def parse_import_line(line: str, number: int) -> dict[str, Any]:
    """One exported user: ``{email, password_hash, metadata?, created_at?, email_verified?,
    provider?}``. Hashes must be the original's scrypt format or argon2 (never clear text)."""
    where = f"line {number}"
    if len(line) > MAX_IMPORT_LINE:
        raise AuthAdminError(f"{where}: longer than {MAX_IMPORT_LINE} characters")
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise AuthAdminError(f"{where}: not valid JSON") from None
    if not isinstance(item, dict):
        raise AuthAdminError(f"{where}: expected a JSON object")
    try:
        email = rules.normalize_email(item.get("email"))
        metadata = rules.check_metadata(item.get("metadata"))
    except rules.AuthError as exc:
        raise AuthAdminError(f"{where}: {exc.message}") from None
    password_hash = item.get("password_hash")
    if password_hash is not None and (
        not isinstance(password_hash, str)
        or "\x00" in password_hash
        or not is_known_format(password_hash)
    ):
        raise AuthAdminError(
            f"{where}: password_hash must be scrypt$N$r$p$salt$hash or an argon2 hash"
        )
    verified = item.get("email_verified", False)
    if not isinstance(verified, bool):
        raise AuthAdminError(f"{where}: email_verified must be true or false")
    provider = item.get("provider") or ("email" if password_hash else "magic_link")
    if provider not in PROVIDERS:
        raise AuthAdminError(f"{where}: provider must be one of {', '.join(PROVIDERS)}")
    return {
        "email": email,
        "password_hash": password_hash,
        "metadata": metadata,
        "created_at": _timestamp(item.get("created_at"), where),
        "email_verified": verified,
        "provider": provider,
    }


def import_users(conn: psycopg.Connection[Any], ref: str, lines: Iterable[str]) -> dict[str, Any]:
    """All or nothing: every line is checked before anything is written; an email already
    in the project is skipped (reported), never overwritten."""
    users = [
        parse_import_line(line, number)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    seen: set[str] = set()
    for number, user in enumerate(users, start=1):
        if user["email"] in seen:
            raise AuthAdminError(f"user {number}: {user['email']} appears twice in the file")
        seen.add(user["email"])
    with conn.transaction():
        project = find_project(conn, ref)
        imported = 0
        for user in users:
            cur = conn.execute(
                """
                INSERT INTO gateway.auth_users
                       (project_id, email, password_hash, metadata, created_at, email_verified,
                        provider)
                VALUES (%s, %s, %s, %s, coalesce(%s, now()), %s, %s)
                ON CONFLICT (project_id, email) DO NOTHING
                """,
                [
                    project.id,
                    user["email"],
                    user["password_hash"],
                    Jsonb(user["metadata"]),
                    user["created_at"],
                    user["email_verified"],
                    user["provider"],
                ],
            )
            imported += cur.rowcount
    return {
        "project": project.name,
        "imported": imported,
        "skipped": len(users) - imported,
        "total": len(users),
    }
