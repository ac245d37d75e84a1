"""The auth API's statements. Each is ONE round trip on an autocommit pool connection:
the throttle counter's upsert travels in the same statement as the lookup it guards, and
a user's row and its new session are written together by data-modifying CTEs.

Throttle: ``gateway.auth_throttle`` holds one row per (bucket, window start). The upsert
``INSERT ... ON CONFLICT DO UPDATE SET count = count + 1 WHERE count < limit RETURNING
count`` is atomic per row, so N instances counting the same bucket at once admit exactly
``limit`` attempts per window; past the limit it returns no row (and stops counting, so the
number stays bounded). Rows of past windows are deleted by the maintenance leader.

Only SHA-256 hashes of tokens are passed in; tokens and passwords never reach SQL.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

USER_COLUMNS = (
    "id, project_id, email, email_verified, provider, metadata, created_at, last_sign_in, "
    "password_reset_required"
)


def _cols(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in USER_COLUMNS.split(","))


# The window a throttle counts in: fixed windows aligned on the epoch, database clock.
_WINDOW = "to_timestamp(floor(extract(epoch FROM now()) / %(window)s) * %(window)s)"
_HIT = f"""
hit AS (
    INSERT INTO gateway.auth_throttle AS t (bucket, window_start)
    VALUES (%(bucket)s, {_WINDOW})
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = t.count + 1
        WHERE t.count < %(limit)s
    RETURNING count
)"""
_RESET_IN = "%(window)s - mod(extract(epoch FROM now())::numeric, %(window)s) AS reset_in"


@dataclass(frozen=True, slots=True)
class Throttle:
    bucket: str
    limit: int
    window_s: int

    def params(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "limit": self.limit, "window": self.window_s}


@dataclass(slots=True)
class Checked:
    """A throttle's verdict plus what the statement looked up."""

    allowed: bool
    retry_after: int
    row: dict[str, Any] | None


def _checked(row: dict[str, Any]) -> Checked:
    allowed = row.pop("hits") is not None
    retry_after = max(1, math.ceil(float(row.pop("reset_in"))))
    return Checked(allowed, retry_after, row if row.get("id") is not None else None)


async def _one(conn: AsyncConnection[Any], sql: str, params: dict[str, Any]) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        row = await cur.fetchone()
    assert row is not None
    return row


async def _maybe(
    conn: AsyncConnection[Any], sql: str, params: dict[str, Any]
) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


# --- throttled look-ups ---------------------------------------------------------------------

THROTTLED_USER_SQL = f"""
WITH {_HIT}
SELECT (SELECT count FROM hit) AS hits, {_RESET_IN}, {_cols("u")}, u.password_hash
  FROM (SELECT 1) one
  LEFT JOIN gateway.auth_users u ON u.project_id = %(project)s AND u.email = %(email)s
"""


async def throttled_user(
    conn: AsyncConnection[Any], throttle: Throttle, project_id: str, email: str
) -> Checked:
    """Count one attempt and fetch the user by email (sign-in, sign-up)."""
    row = await _one(
        conn, THROTTLED_USER_SQL, {**throttle.params(), "project": project_id, "email": email}
    )
    return _checked(row)


CREATE_LINK_SQL = f"""
WITH {_HIT},
link AS (
    INSERT INTO gateway.auth_magic_links (project_id, email, token_hash, expires_at)
    SELECT %(project)s, %(email)s, %(token_hash)s, now() + make_interval(secs => %(ttl)s)
     WHERE EXISTS (SELECT 1 FROM hit)
    RETURNING expires_at
)
SELECT (SELECT count FROM hit) AS hits, {_RESET_IN}, (SELECT expires_at FROM link) AS expires_at
"""


async def create_magic_link(
    conn: AsyncConnection[Any],
    throttle: Throttle,
    project_id: str,
    email: str,
    token_hash: str,
    ttl_s: int,
) -> tuple[bool, int, dt.datetime | None]:
    row = await _one(
        conn,
        CREATE_LINK_SQL,
        {
            **throttle.params(),
            "project": project_id,
            "email": email,
            "token_hash": token_hash,
            "ttl": ttl_s,
        },
    )
    checked = _checked(row)
    return checked.allowed, checked.retry_after, row.get("expires_at")


# The CTE every flow that signs a user in ends with: one new session for the user row
# ``u`` the statement produced (token hash, lifetime, ip and user agent as parameters).
_SESSION_FOR_U = """s AS (
    INSERT INTO gateway.auth_sessions
           (project_id, user_id, token_hash, expires_at, ip, user_agent)
    SELECT u.project_id, u.id, %(session_hash)s, now() + make_interval(secs => %(ttl)s),
           %(ip)s, %(ua)s
      FROM u
    RETURNING expires_at
)"""

# The link is claimed (used_at set) only if the throttle allowed the attempt; the user is
# created on first verification (provider magic_link) or marked verified; the session is
# written in the same statement.
VERIFY_LINK_SQL = f"""
WITH {_HIT},
link AS (
    UPDATE gateway.auth_magic_links SET used_at = now()
     WHERE token_hash = %(link_hash)s AND project_id = %(project)s AND used_at IS NULL
       AND EXISTS (SELECT 1 FROM hit)
    RETURNING email, expires_at > now() AS live
),
u AS (
    INSERT INTO gateway.auth_users AS au
           (project_id, email, provider, email_verified, last_sign_in)
    SELECT %(project)s, email, 'magic_link', true, now() FROM link WHERE live
    ON CONFLICT (project_id, email)
        DO UPDATE SET email_verified = true, last_sign_in = now()
    RETURNING {_cols("au")}
),
{_SESSION_FOR_U}
SELECT (SELECT count FROM hit) AS hits, {_RESET_IN}, (SELECT live FROM link) AS live,
       {_cols("u")}, (SELECT expires_at FROM s) AS session_expires_at
  FROM (SELECT 1) one LEFT JOIN u ON true
"""


async def verify_magic_link(
    conn: AsyncConnection[Any],
    throttle: Throttle,
    project_id: str,
    link_hash: str,
    session_hash: str,
    ttl_s: int,
    ip: str | None,
    user_agent: str | None,
) -> tuple[Checked, bool | None]:
    """``(throttle verdict with the user row, live)``; live None: no unused link."""
    row = await _one(
        conn,
        VERIFY_LINK_SQL,
        {
            **throttle.params(),
            "project": project_id,
            "link_hash": link_hash,
            "session_hash": session_hash,
            "ttl": ttl_s,
            "ip": ip,
            "ua": user_agent,
        },
    )
    live = row.pop("live")
    return _checked(row), live


# --- writes -------------------------------------------------------------------------------

SIGN_UP_SQL = f"""
WITH u AS (
    INSERT INTO gateway.auth_users AS au (project_id, email, password_hash, metadata)
    VALUES (%(project)s, %(email)s, %(password_hash)s, %(metadata)s)
    ON CONFLICT (project_id, email) DO NOTHING
    RETURNING {_cols("au")}
),
{_SESSION_FOR_U}
SELECT {_cols("u")}, s.expires_at AS session_expires_at FROM u, s
"""


async def sign_up(
    conn: AsyncConnection[Any],
    project_id: str,
    email: str,
    password_hash: str,
    metadata: dict[str, Any],
    session_hash: str,
    ttl_s: int,
    ip: str | None,
    user_agent: str | None,
) -> dict[str, Any] | None:
    """The new user and its session's expiry; None when the email is taken."""
    return await _maybe(
        conn,
        SIGN_UP_SQL,
        {
            "project": project_id,
            "email": email,
            "password_hash": password_hash,
            "metadata": Jsonb(metadata),
            "session_hash": session_hash,
            "ttl": ttl_s,
            "ip": ip,
            "ua": user_agent,
        },
    )


# Guarded by the hash that was verified: a password changed or cleared (force-reset) in
# between makes this a no-op and the sign-in fails.
SIGN_IN_SQL = f"""
WITH u AS (
    UPDATE gateway.auth_users AS au
       SET last_sign_in = now(), password_hash = coalesce(%(rehash)s, au.password_hash)
     WHERE au.id = %(user)s AND au.password_hash = %(verified_hash)s
    RETURNING {_cols("au")}
),
{_SESSION_FOR_U}
SELECT {_cols("u")}, s.expires_at AS session_expires_at FROM u, s
"""


async def sign_in(
    conn: AsyncConnection[Any],
    user_id: str,
    verified_hash: str,
    rehash: str | None,
    session_hash: str,
    ttl_s: int,
    ip: str | None,
    user_agent: str | None,
) -> dict[str, Any] | None:
    return await _maybe(
        conn,
        SIGN_IN_SQL,
        {
            "user": user_id,
            "verified_hash": verified_hash,
            "rehash": rehash,
            "session_hash": session_hash,
            "ttl": ttl_s,
            "ip": ip,
            "ua": user_agent,
        },
    )


# --- sessions -------------------------------------------------------------------------------

# last_used_at is written at most once a minute per session (no write per request).
SESSION_USER_SQL = f"""
WITH s AS (
    SELECT id, user_id, expires_at > now() AS live
      FROM gateway.auth_sessions
     WHERE token_hash = %(hash)s AND project_id = %(project)s AND revoked_at IS NULL
),
touch AS (
    UPDATE gateway.auth_sessions t SET last_used_at = now()
      FROM s
     WHERE t.id = s.id AND s.live
       AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '60 seconds')
)
SELECT s.live, {_cols("u")} FROM s JOIN gateway.auth_users u ON u.id = s.user_id
"""


async def session_user(
    conn: AsyncConnection[Any], project_id: str, token_hash: str
) -> dict[str, Any] | None:
    """The session's user with ``live``; None when no unrevoked session has this hash."""
    return await _maybe(conn, SESSION_USER_SQL, {"hash": token_hash, "project": project_id})


# With a grace period the old session keeps working for ``grace`` seconds (concurrent tabs
# refreshing at once each get a new token); with none it is revoked at once.
REFRESH_SQL = """
WITH old AS (
    UPDATE gateway.auth_sessions
       SET expires_at = least(expires_at, now() + make_interval(secs => %(grace)s)),
           revoked_at = CASE WHEN %(grace)s = 0 THEN now() END
     WHERE token_hash = %(hash)s AND project_id = %(project)s
       AND revoked_at IS NULL AND expires_at > now()
    RETURNING project_id, user_id
),
new AS (
    INSERT INTO gateway.auth_sessions
           (project_id, user_id, token_hash, expires_at, ip, user_agent)
    SELECT project_id, user_id, %(new_hash)s, now() + make_interval(secs => %(ttl)s),
           %(ip)s, %(ua)s
      FROM old
    RETURNING expires_at
)
SELECT expires_at FROM new
"""

SESSION_STATE_SQL = """
SELECT expires_at > now() AS live FROM gateway.auth_sessions
 WHERE token_hash = %(hash)s AND project_id = %(project)s AND revoked_at IS NULL
"""


async def refresh(
    conn: AsyncConnection[Any],
    project_id: str,
    token_hash: str,
    new_hash: str,
    ttl_s: int,
    grace_s: int,
    ip: str | None,
    user_agent: str | None,
) -> dt.datetime | str:
    """The new session's expiry, or ``"not_found"`` / ``"expired"``."""
    row = await _maybe(
        conn,
        REFRESH_SQL,
        {
            "hash": token_hash,
            "project": project_id,
            "new_hash": new_hash,
            "ttl": ttl_s,
            "grace": grace_s,
            "ip": ip,
            "ua": user_agent,
        },
    )
    if row is not None:
        return row["expires_at"]
    # refused: only now a second statement, to say why
    state = await _maybe(conn, SESSION_STATE_SQL, {"hash": token_hash, "project": project_id})
    return "not_found" if state is None else "expired"


SIGN_OUT_SQL = """
UPDATE gateway.auth_sessions SET revoked_at = now()
 WHERE token_hash = %(hash)s AND project_id = %(project)s AND revoked_at IS NULL
"""


async def sign_out(conn: AsyncConnection[Any], project_id: str, token_hash: str) -> None:
    await conn.execute(SIGN_OUT_SQL, {"hash": token_hash, "project": project_id})


# --- maintenance ------------------------------------------------------------------------------

# Past throttle windows, used or expired magic links, and sessions dead for a day: bounded
# per tick so one run never holds the leader's transaction for long.
CLEANUP_BATCH = 5000
CLEANUP_SQL = (
    """
DELETE FROM gateway.auth_throttle WHERE ctid IN (
    SELECT ctid FROM gateway.auth_throttle
     WHERE window_start < now() - make_interval(secs => %(window)s) LIMIT %(batch)s)
""",
    """
DELETE FROM gateway.auth_magic_links WHERE id IN (
    SELECT id FROM gateway.auth_magic_links
     WHERE expires_at < now() - interval '1 hour' LIMIT %(batch)s)
""",
    """
DELETE FROM gateway.auth_sessions WHERE id IN (
    SELECT id FROM gateway.auth_sessions
     WHERE expires_at < now() - interval '1 day'
        OR revoked_at < now() - interval '1 day' LIMIT %(batch)s)
""",
)


async def cleanup(conn: AsyncConnection[Any], window_s: int) -> int:
    deleted = 0
    for sql in CLEANUP_SQL:
        cur = await conn.execute(sql, {"window": window_s, "batch": CLEANUP_BATCH})
        deleted += max(cur.rowcount, 0)
    return deleted
