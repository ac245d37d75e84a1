"""Session statements: the session's user, refresh, sign-out and password change, with
sessions as FAMILIES (migration 0015, docs/auth.md).

A sign-up, sign-in or magic-link verification starts a family; a refresh rotates the
token within it. A family ends as one: its row's ``revoked_at`` and every member's are set
by the same statement, and the admission statement reads the family too, so a family
revocation is seen on the next request on every instance.

Races between a refresh and a revocation are settled by the family's row: the refresh
holds it ``FOR SHARE`` while it writes the new session, a revocation updates it. In READ
COMMITTED a revocation that waited for the refresh then revokes the family the new
session belongs to (which admission checks); a refresh that waited for a revocation
re-reads the row, finds it revoked and mints nothing.

Each function is one round trip (the refusal paths of refresh and sign-out add one, to
say why), on an autocommit pool connection; only token hashes reach SQL.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from gateway.auth.store import (
    RESET_IN,
    Checked,
    Throttle,
    fetch_maybe,
    fetch_one,
    hit_cte,
    to_checked,
    user_cols,
)

# a session made by a magic link this recently may set a password without the current one
RESET_WINDOW_S = 600

# The presented session, valid or not, with its family's state. ``state``: live,
# expired, or revoked (the session or its family).
_PRESENTED = """cur AS (
    SELECT s.id, s.user_id, s.family_id, s.rotated_at, s.created_at, s.via,
           CASE WHEN s.revoked_at IS NOT NULL OR f.revoked_at IS NOT NULL THEN 'revoked'
                WHEN s.expires_at <= now() THEN 'expired'
                ELSE 'live' END AS state
      FROM gateway.auth_sessions s
      JOIN gateway.auth_session_families f ON f.id = s.family_id
     WHERE s.token_hash = %(hash)s AND s.project_id = %(project)s
)"""


def _revoke(where_family: str, reason: str) -> str:
    """Two CTEs: ``fam`` ends the families ``where_family`` picks (on ``f``, with the
    presented session ``cur``), ``ses`` their member sessions. ``ses`` reads ``fam``, so
    every revocation locks the family row BEFORE any session row — the order a refresh
    takes them in (family ``FOR SHARE``, then its old session). With sessions first, a
    sign-out and two refreshes of one token deadlocked (tests/db/test_auth_families_db.py
    found it)."""
    return f"""fam AS (
    UPDATE gateway.auth_session_families f
       SET revoked_at = now(), revoked_reason = '{reason}'
      FROM cur
     WHERE f.revoked_at IS NULL AND ({where_family})
    RETURNING f.id
),
ses AS (
    UPDATE gateway.auth_sessions x SET revoked_at = now()
     WHERE x.family_id IN (SELECT id FROM fam) AND x.revoked_at IS NULL
    RETURNING x.id
)"""


# last_used_at is written at most once a minute per session (no write per request).
SESSION_USER_SQL = f"""
WITH {_PRESENTED},
touch AS (
    UPDATE gateway.auth_sessions t SET last_used_at = now()
      FROM cur
     WHERE t.id = cur.id AND cur.state = 'live'
       AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '60 seconds')
)
SELECT cur.state = 'live' AS live, {user_cols("u")}
  FROM cur JOIN gateway.auth_users u ON u.id = cur.user_id
 WHERE cur.state <> 'revoked'
"""


async def session_user(
    conn: AsyncConnection[Any], project_id: str, token_hash: str
) -> dict[str, Any] | None:
    """The session's user with ``live``; None when no unrevoked session has this hash."""
    return await fetch_maybe(conn, SESSION_USER_SQL, {"hash": token_hash, "project": project_id})


# With a grace period the old session keeps working for ``grace`` seconds (concurrent tabs
# refreshing at once each get a new token); with none it is revoked at once. Presenting a
# rotated session after its grace is refresh-token REUSE (RFC 9700, 4.14.2): whoever holds
# that token is not the client that rotated it, so the whole family ends (``reuse``).
REFRESH_SQL = f"""
WITH {_PRESENTED},
fam_lock AS (
    SELECT f.id FROM gateway.auth_session_families f
     WHERE f.id = (SELECT family_id FROM cur WHERE state = 'live') AND f.revoked_at IS NULL
       FOR SHARE
),
old AS (
    UPDATE gateway.auth_sessions o
       SET expires_at = least(o.expires_at, now() + make_interval(secs => %(grace)s)),
           revoked_at = CASE WHEN %(grace)s = 0 THEN now() END,
           rotated_at = coalesce(o.rotated_at, now())
      FROM fam_lock
     WHERE o.id = (SELECT id FROM cur) AND o.family_id = fam_lock.id
       AND o.revoked_at IS NULL AND o.expires_at > now()
    RETURNING o.project_id, o.user_id, o.family_id
),
new AS (
    INSERT INTO gateway.auth_sessions
           (project_id, user_id, family_id, via, token_hash, expires_at, ip, user_agent)
    SELECT project_id, user_id, family_id, 'refresh', %(new_hash)s,
           now() + make_interval(secs => %(ttl)s), %(ip)s, %(ua)s
      FROM old
    RETURNING expires_at
),
reuse AS (
    SELECT family_id FROM cur
     WHERE cur.rotated_at IS NOT NULL AND cur.state = 'expired'
        OR cur.rotated_at IS NOT NULL AND cur.state = 'revoked' AND %(grace)s = 0
),
{_revoke("f.id IN (SELECT family_id FROM reuse)", "reuse")}
SELECT (SELECT expires_at FROM new) AS expires_at, (SELECT state FROM cur) AS state,
       (SELECT count(*) FROM fam) AS reused
"""


@dataclass(frozen=True, slots=True)
class Refreshed:
    expires_at: dt.datetime | None  # None: refused, ``refusal`` says why
    refusal: str | None = None  # "not_found" / "expired"
    reuse: bool = False


async def refresh(
    conn: AsyncConnection[Any],
    project_id: str,
    token_hash: str,
    new_hash: str,
    ttl_s: int,
    grace_s: int,
    ip: str | None,
    user_agent: str | None,
) -> Refreshed:
    row = await fetch_one(
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
    if row["expires_at"] is not None:
        return Refreshed(row["expires_at"])
    reuse = bool(row["reused"])
    # a rotated token past its grace, a revoked family, an unknown token: not found
    if row["state"] == "expired" and not reuse:
        return Refreshed(None, "expired")
    return Refreshed(None, "not_found", reuse)


# Sign-out ends the presented session's FAMILY: every token refresh minted from it, in its
# grace or not. ``global`` ends every family of the user, but only for a live session (a
# stale token must not be able to sign everyone out).
_SIGNED_OUT_FAMILIES = (
    "f.id = cur.family_id OR (%(global)s AND cur.state = 'live' AND f.user_id = cur.user_id)"
)
SIGN_OUT_SQL = f"""
WITH {_PRESENTED},
{_revoke(_SIGNED_OUT_FAMILIES, "sign_out")}
SELECT (SELECT state FROM cur) AS state, (SELECT count(*) FROM ses) AS revoked_sessions
"""


async def sign_out(
    conn: AsyncConnection[Any], project_id: str, token_hash: str, *, everywhere: bool
) -> str | None:
    """The presented session's state before (``live`` / ``expired`` / ``revoked``), None
    when no session has this hash."""
    row = await fetch_one(
        conn, SIGN_OUT_SQL, {"hash": token_hash, "project": project_id, "global": everywhere}
    )
    state: str | None = row["state"]
    return state


# --- password change -----------------------------------------------------------------------

# One attempt counted per USER (the bucket is completed with the session's user id in SQL,
# so refreshing to a new token doesn't buy new guesses), the user and the session's facts.
PASSWORD_CHECK_SQL = f"""
WITH {_PRESENTED},
{hit_cte("%(bucket)s || ':' || cur.user_id::text", "FROM cur")}
SELECT (SELECT count FROM hit) AS hits, {RESET_IN}, cur.state, cur.id AS session_id,
       (cur.via = 'magic_link'
        AND cur.created_at > now() - make_interval(secs => %(reset_window)s)) AS fresh_link,
       {user_cols("u")}, u.password_hash
  FROM (SELECT 1) one
  LEFT JOIN cur ON true
  LEFT JOIN gateway.auth_users u ON u.id = cur.user_id
"""


@dataclass(slots=True)
class PasswordCheck:
    """What the password route learns in its first round trip."""

    checked: Checked  # the throttle's verdict; ``row`` is the user, with password_hash
    state: str | None  # the presented session: live / expired / revoked, None: unknown
    session_id: str | None
    fresh_link: bool  # a magic-link session younger than RESET_WINDOW_S


async def password_check(
    conn: AsyncConnection[Any], throttle: Throttle, project_id: str, token_hash: str
) -> PasswordCheck:
    row = await fetch_one(
        conn,
        PASSWORD_CHECK_SQL,
        {
            **throttle.params(),
            "hash": token_hash,
            "project": project_id,
            "reset_window": RESET_WINDOW_S,
        },
    )
    state, session_id, fresh = row.pop("state"), row.pop("session_id"), row.pop("fresh_link")
    return PasswordCheck(
        to_checked(row), state, str(session_id) if session_id else None, bool(fresh)
    )


# Guarded twice: the session must still be live (a sign-out meanwhile wins) and the stored
# hash must still be the one that was verified (a concurrent change or a force-reset wins:
# no row). Every OTHER session of the user ends: other families (family rows locked before
# their sessions, as everywhere: see ``_revoke``), and the older tokens of this one still
# in their refresh grace (this family's row is not revoked, so not locked).
SET_PASSWORD_SQL = f"""
WITH cur AS (
    SELECT s.id, s.user_id, s.family_id
      FROM gateway.auth_sessions s
      JOIN gateway.auth_session_families f ON f.id = s.family_id
     WHERE s.id = %(session)s AND s.revoked_at IS NULL AND s.expires_at > now()
       AND f.revoked_at IS NULL
),
u AS (
    UPDATE gateway.auth_users au
       SET password_hash = %(new_hash)s, password_reset_required = false
      FROM cur
     WHERE au.id = cur.user_id AND au.password_hash IS NOT DISTINCT FROM %(verified_hash)s
    RETURNING {user_cols("au")}
),
fam AS (
    UPDATE gateway.auth_session_families f
       SET revoked_at = now(), revoked_reason = 'password'
      FROM cur, u
     WHERE f.user_id = cur.user_id AND f.id <> cur.family_id AND f.revoked_at IS NULL
    RETURNING f.id
),
ses AS (
    UPDATE gateway.auth_sessions x SET revoked_at = now()
      FROM cur, u
     WHERE x.revoked_at IS NULL
       AND (x.family_id IN (SELECT id FROM fam) OR x.family_id = cur.family_id AND x.id <> cur.id)
    RETURNING x.id
)
SELECT {user_cols("u")}, (SELECT count(*) FROM ses) AS revoked_sessions FROM u
"""


async def set_password(
    conn: AsyncConnection[Any],
    session_id: str,
    verified_hash: str | None,
    new_hash: str,
) -> dict[str, Any] | None:
    """The user after the change, with ``revoked_sessions``; None when the session ended
    or the password changed meanwhile."""
    return await fetch_maybe(
        conn,
        SET_PASSWORD_SQL,
        {"session": session_id, "verified_hash": verified_hash, "new_hash": new_hash},
    )


# ``gateway auth logout`` / ``force-reset`` (and the admin API): every family of a user.
REVOKE_USER_SQL = """
WITH fam AS (
    UPDATE gateway.auth_session_families SET revoked_at = now(), revoked_reason = %(reason)s
     WHERE user_id = %(user)s AND revoked_at IS NULL
    RETURNING id
)
UPDATE gateway.auth_sessions SET revoked_at = now()
 WHERE family_id IN (SELECT id FROM fam) AND revoked_at IS NULL
"""
