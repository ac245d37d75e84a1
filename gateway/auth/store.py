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
import logging
import math
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

log = logging.getLogger("gateway.auth")

USER_COLUMNS = (
    "id, project_id, email, email_verified, provider, metadata, created_at, last_sign_in, "
    "password_reset_required"
)


def user_cols(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in USER_COLUMNS.split(","))


# The window a throttle counts in: fixed windows aligned on the epoch, database clock.
_WINDOW = "to_timestamp(floor(extract(epoch FROM now()) / %(window)s) * %(window)s)"


def hit_cte(bucket: str = "%(bucket)s", source: str = "") -> str:
    """The throttle's counting CTE ``hit``: one row (the count) when the attempt is
    allowed, none past the limit. ``bucket`` is an SQL expression for the counter's key,
    ``source`` an optional ``FROM`` clause it reads (no row there: nothing counted)."""
    return f"""
hit AS (
    INSERT INTO gateway.auth_throttle AS t (bucket, window_start)
    SELECT {bucket}, {_WINDOW} {source}
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = t.count + 1
        WHERE t.count < %(limit)s
    RETURNING count
)"""


HIT = hit_cte()
RESET_IN = "%(window)s - mod(extract(epoch FROM now())::numeric, %(window)s) AS reset_in"


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


def to_checked(row: dict[str, Any]) -> Checked:
    allowed = row.pop("hits") is not None
    retry_after = max(1, math.ceil(float(row.pop("reset_in"))))
    return Checked(allowed, retry_after, row if row.get("id") is not None else None)


async def fetch_one(conn: AsyncConnection[Any], sql: str, params: dict[str, Any]) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        row = await cur.fetchone()
    assert row is not None
    return row


async def fetch_maybe(
    conn: AsyncConnection[Any], sql: str, params: dict[str, Any]
) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


# --- throttled look-ups ---------------------------------------------------------------------

THROTTLED_USER_SQL = f"""
WITH {HIT}
SELECT (SELECT count FROM hit) AS hits, {RESET_IN}, {user_cols("u")}, u.password_hash
  FROM (SELECT 1) one
  LEFT JOIN gateway.auth_users u ON u.project_id = %(project)s AND u.email = %(email)s
"""


async def throttled_user(
    conn: AsyncConnection[Any], throttle: Throttle, project_id: str, email: str
) -> Checked:
    """Count one attempt and fetch the user by email (sign-in, sign-up)."""
    row = await fetch_one(
        conn, THROTTLED_USER_SQL, {**throttle.params(), "project": project_id, "email": email}
    )
    return to_checked(row)


CREATE_LINK_SQL = f"""
WITH {HIT},
link AS (
    INSERT INTO gateway.auth_magic_links (project_id, email, token_hash, expires_at)
    SELECT %(project)s, %(email)s, %(token_hash)s, now() + make_interval(secs => %(ttl)s)
     WHERE EXISTS (SELECT 1 FROM hit)
    RETURNING expires_at
)
SELECT (SELECT count FROM hit) AS hits, {RESET_IN}, (SELECT expires_at FROM link) AS expires_at
"""


async def create_magic_link(
    conn: AsyncConnection[Any],
    throttle: Throttle,
    project_id: str,
    email: str,
    token_hash: str,
    ttl_s: int,
) -> tuple[bool, int, dt.datetime | None]:
    row = await fetch_one(
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
    checked = to_checked(row)
    return checked.allowed, checked.retry_after, row.get("expires_at")


# The CTE every flow that signs a user in ends with: one new session for the user row
# ``u`` the statement produced, as the first of a new family (token hash, lifetime, how it
# was created, ip and user agent as parameters).
_SESSION_FOR_U = """f AS (
    INSERT INTO gateway.auth_session_families (project_id, user_id)
    SELECT u.project_id, u.id FROM u
    RETURNING id, project_id, user_id
),
s AS (
    INSERT INTO gateway.auth_sessions
           (project_id, user_id, family_id, via, token_hash, expires_at, ip, user_agent)
    SELECT f.project_id, f.user_id, f.id, %(via)s, %(session_hash)s,
           now() + make_interval(secs => %(ttl)s), %(ip)s, %(ua)s
      FROM f
    RETURNING expires_at
)"""


def _session_params(
    via: str, session_hash: str, ttl_s: int, ip: str | None, user_agent: str | None
) -> dict[str, Any]:
    return {"via": via, "session_hash": session_hash, "ttl": ttl_s, "ip": ip, "ua": user_agent}


# Ends every family of the users in ``takeover`` (a CTE of user ids) and their sessions,
# family rows first (the lock order of gateway/auth/sessions.py's ``_revoke``).
_REVOKE_TAKEN_OVER = """revoked_f AS (
    UPDATE gateway.auth_session_families SET revoked_at = now(), revoked_reason = 'takeover'
     WHERE user_id IN (SELECT id FROM takeover) AND revoked_at IS NULL
    RETURNING id
),
revoked_s AS (
    UPDATE gateway.auth_sessions SET revoked_at = now()
     WHERE family_id IN (SELECT id FROM revoked_f) AND revoked_at IS NULL
)"""

# The link is claimed (used_at set) only if the throttle allowed the attempt; the user is
# created on first verification (provider magic_link) or marked verified; the session is
# written in the same statement.
#
# Verified ownership (account pre-hijacking): whoever follows the link holds the mailbox.
# When the account's address was NOT verified yet, someone else may have signed up with
# it, so its password is cleared and every family of its sessions ends (``takeover``) —
# unless the request also presents a live session of that very account (``keeper_hash``:
# the person who signed up, confirming on the same device, proves both). The new session
# starts a family after the revocation, so it survives it.
VERIFY_LINK_SQL = f"""
WITH {HIT},
link AS (
    UPDATE gateway.auth_magic_links SET used_at = now()
     WHERE token_hash = %(link_hash)s AND project_id = %(project)s AND used_at IS NULL
       AND EXISTS (SELECT 1 FROM hit)
    RETURNING email, expires_at > now() AS live
),
prior AS (
    SELECT pu.id, pu.email_verified FROM gateway.auth_users pu, link
     WHERE pu.project_id = %(project)s AND pu.email = link.email AND link.live
),
keeper AS (
    SELECT 1 FROM gateway.auth_sessions ks
      JOIN gateway.auth_session_families kf ON kf.id = ks.family_id
      JOIN prior ON prior.id = ks.user_id
     WHERE ks.token_hash = %(keeper_hash)s AND ks.revoked_at IS NULL
       AND ks.expires_at > now() AND kf.revoked_at IS NULL
),
takeover AS (
    SELECT id FROM prior WHERE NOT email_verified AND NOT EXISTS (SELECT 1 FROM keeper)
),
{_REVOKE_TAKEN_OVER},
u AS (
    INSERT INTO gateway.auth_users AS au
           (project_id, email, provider, email_verified, last_sign_in)
    SELECT %(project)s, email, 'magic_link', true, now() FROM link WHERE live
    ON CONFLICT (project_id, email)
        DO UPDATE SET email_verified = true, last_sign_in = now(),
                      password_hash = CASE WHEN EXISTS (SELECT 1 FROM takeover) THEN NULL
                                           ELSE au.password_hash END
    RETURNING {user_cols("au")}
),
{_SESSION_FOR_U}
SELECT (SELECT count FROM hit) AS hits, {RESET_IN}, (SELECT live FROM link) AS live,
       {user_cols("u")}, (SELECT expires_at FROM s) AS session_expires_at,
       (SELECT count(*) FROM revoked_f) AS revoked_families
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
    keeper_hash: str | None = None,
) -> tuple[Checked, bool | None]:
    """``(throttle verdict with the user row, live)``; live None: no unused link.
    ``keeper_hash``: the hash of a session the request also presented (see above)."""
    row = await fetch_one(
        conn,
        VERIFY_LINK_SQL,
        {
            **throttle.params(),
            "project": project_id,
            "link_hash": link_hash,
            "keeper_hash": keeper_hash,
            **_session_params("magic_link", session_hash, ttl_s, ip, user_agent),
        },
    )
    live = row.pop("live")
    if row.pop("revoked_families"):
        log.info("a verified address took over an unverified account: sessions ended")
    return to_checked(row), live


# --- writes -------------------------------------------------------------------------------

# With ``link_hash`` (SMTP configured) the verification link is written in the same
# statement: it is an ordinary magic link for the new address.
SIGN_UP_SQL = f"""
WITH u AS (
    INSERT INTO gateway.auth_users AS au (project_id, email, password_hash, metadata)
    VALUES (%(project)s, %(email)s, %(password_hash)s, %(metadata)s)
    ON CONFLICT (project_id, email) DO NOTHING
    RETURNING {user_cols("au")}
),
link AS (
    INSERT INTO gateway.auth_magic_links (project_id, email, token_hash, expires_at)
    SELECT u.project_id, u.email, %(link_hash)s, now() + make_interval(secs => %(link_ttl)s)
      FROM u WHERE %(link_hash)s::text IS NOT NULL
),
{_SESSION_FOR_U}
SELECT {user_cols("u")}, s.expires_at AS session_expires_at FROM u, s
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
    link_hash: str | None = None,
    link_ttl_s: int = 0,
) -> dict[str, Any] | None:
    """The new user and its session's expiry; None when the email is taken."""
    return await fetch_maybe(
        conn,
        SIGN_UP_SQL,
        {
            "project": project_id,
            "email": email,
            "password_hash": password_hash,
            "metadata": Jsonb(metadata),
            "link_hash": link_hash,
            "link_ttl": link_ttl_s,
            **_session_params("sign_up", session_hash, ttl_s, ip, user_agent),
        },
    )


# Guarded by the hash that was verified: a password changed or cleared (force-reset) in
# between makes this a no-op and the sign-in fails.
SIGN_IN_SQL = f"""
WITH u AS (
    UPDATE gateway.auth_users AS au
       SET last_sign_in = now(), password_hash = coalesce(%(rehash)s, au.password_hash)
     WHERE au.id = %(user)s AND au.password_hash = %(verified_hash)s
    RETURNING {user_cols("au")}
),
{_SESSION_FOR_U}
SELECT {user_cols("u")}, s.expires_at AS session_expires_at FROM u, s
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
    return await fetch_maybe(
        conn,
        SIGN_IN_SQL,
        {
            "user": user_id,
            "verified_hash": verified_hash,
            "rehash": rehash,
            **_session_params("password", session_hash, ttl_s, ip, user_agent),
        },
    )


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
    # families left without a session (a day old, so never one being written)
    """
DELETE FROM gateway.auth_session_families WHERE id IN (
    SELECT f.id FROM gateway.auth_session_families f
     WHERE f.created_at < now() - interval '1 day'
       AND NOT EXISTS (SELECT 1 FROM gateway.auth_sessions s WHERE s.family_id = f.id)
     LIMIT %(batch)s)
""",
)


async def cleanup(conn: AsyncConnection[Any], window_s: int) -> int:
    deleted = 0
    for sql in CLEANUP_SQL:
        cur = await conn.execute(sql, {"window": window_s, "batch": CLEANUP_BATCH})
        deleted += max(cur.rowcount, 0)
    return deleted
