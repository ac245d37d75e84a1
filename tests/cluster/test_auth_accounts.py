"""Accounts you can trust (issue 21), on three real ``gateway serve`` processes sharing one
real PostgreSQL, with a real SMTP server (aiosmtpd, STARTTLS):

* verified ownership of an address: the pre-hijacking attack, end to end;
* password change and reset (``POST /auth/password``);
* sessions as families: the refresh fork after sign-out, refresh-token reuse, global
  sign-out — each checked on every instance, on the auth routes AND on a data route (the
  admission statement), since a family revocation must be seen by the next request;
* the client's address behind 1 to 3 proxies with a spoofed left-most entry.

The refresh grace is 30 s here, so tokens stay in their grace for the whole test; a grace
that has passed is made by ageing the row in the database, never by sleeping.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway.auth.tokens import token_hash
from tests.support.cli import run_cli
from tests.support.harness import ClusterStarter, GatewayCluster
from tests.support.owner_rows import owner_project
from tests.support.smtp import (
    Inbox,
    link_token,
    smtp_env,
    wait_for_subject,
)

AUTH = "/v1/inhouse/auth"
DB = "/v1/inhouse/db"
SELECT = {"query": {"operation": "select", "table": "notes"}}
VERIFY_SUBJECT = "Confirm your email address"
SIGN_IN_SUBJECT = "Your sign-in link"


@pytest.fixture(scope="module")
def cluster(module_cluster: ClusterStarter, smtp: tuple[Inbox, int, Path]) -> GatewayCluster:
    _, port, cert = smtp
    env = {
        **smtp_env(port, cert),
        "GATEWAY_AUTH_REFRESH_GRACE_S": "30",
        "GATEWAY_POOL_MAX": "6",
        # the test client is the proxy (127.0.0.1); 10.0.0.0/8 are the proxies behind it
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32,10.0.0.0/8",
    }
    return module_cluster(3, env=env)


@pytest.fixture
def project(make_project: Any) -> dict[str, Any]:
    """A project with the owner table ``notes``: a data route a session is admitted on."""
    return owner_project(make_project)


def _post(
    url: str, path: str, key: str, body: Any = None, token: str | None = None, **headers: str
) -> httpx.Response:
    sent = {"x-api-key": key, **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(url + AUTH + path, json=body, headers=sent, timeout=30)


def _code(response: httpx.Response) -> str:
    """The error code, in the auth envelope (``ok: false``) or the data routes'."""
    body = response.json()
    assert body.get("ok") is not True and "error" in body, body
    return str(body["error"]["code"])


def _email() -> str:
    return f"u-{uuid.uuid4().hex[:10]}@example.test"


def _works(cluster: GatewayCluster, key: str, token: str) -> list[bool]:
    """Per instance: does the session work on /user AND on a data route (admission)?"""
    results = []
    for url in cluster.urls:
        hdrs = {"x-api-key": key, "Authorization": f"Bearer {token}"}
        user = httpx.get(url + AUTH + "/user", headers=hdrs, timeout=30)
        data = httpx.post(url + DB + "/query", json=SELECT, headers=hdrs, timeout=30)
        assert user.status_code in (200, 401) and data.status_code in (200, 401), data.text
        assert user.status_code == data.status_code, (user.text, data.text)
        if user.status_code == 401:
            assert _code(user) in ("SESSION_NOT_FOUND", "SESSION_EXPIRED")
            assert _code(data) in ("SESSION_NOT_FOUND", "SESSION_EXPIRED")
        results.append(user.status_code == 200)
    return results


ALIVE, DEAD = [True] * 3, [False] * 3


def _sign_up(url: str, key: str, address: str, password: str) -> dict[str, Any]:
    r = _post(url, "/sign-up", key, {"email": address, "password": password})
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


def _sign_in(url: str, key: str, address: str, password: str) -> str:
    r = _post(url, "/sign-in", key, {"email": address, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["session"]["token"])


def _refresh(url: str, key: str, token: str) -> str:
    r = _post(url, "/refresh", key, token=token)
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["session"]["token"])


# --- verified ownership of an address ---------------------------------------------------------


def test_pre_hijacking_ends_when_the_owner_of_the_address_verifies(
    cluster: GatewayCluster, project: dict[str, Any], smtp: tuple[Inbox, int, Path]
) -> None:
    """The attacker signs up with the victim's address; the victim follows the link the
    sign-up mailed them: the attacker's password and session stop working everywhere."""
    inbox, _, _ = smtp
    key = project["public_key"]
    a, b, c = cluster.urls
    victim = _email()
    attacker = _sign_up(a, key, victim, "attacker-password")
    assert attacker["user"]["emailVerified"] is False
    attacker_session = attacker["session"]["token"]
    attacker_second = _sign_in(b, key, victim, "attacker-password")
    assert _works(cluster, key, attacker_session) == ALIVE

    # the sign-up mailed a verification link to the address: the victim follows it
    mail = wait_for_subject(inbox, victim, VERIFY_SUBJECT)
    verified = _post(b, "/magic-link/verify", key, {"token": link_token(mail)})
    assert verified.status_code == 200, verified.text
    user = verified.json()["data"]["user"]
    assert user["emailVerified"] is True and user["id"] == attacker["user"]["id"]
    victim_session = verified.json()["data"]["session"]["token"]

    for token in (attacker_session, attacker_second):
        assert _works(cluster, key, token) == DEAD
    refused = _post(c, "/sign-in", key, {"email": victim, "password": "attacker-password"})
    assert refused.status_code == 401 and _code(refused) == "INVALID_CREDENTIALS"
    assert _works(cluster, key, victim_session) == ALIVE
    # the attacker can't refresh their way back in either
    stale = _post(a, "/refresh", key, token=attacker_session)
    assert stale.status_code == 401 and _code(stale) == "SESSION_NOT_FOUND"

    # the owner sets a password with the fresh magic-link session (no current password)
    chosen = _post(c, "/password", key, {"password": "victim-own-password"}, token=victim_session)
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["data"]["user"]["email"] == victim
    assert _sign_in(a, key, victim, "victim-own-password")
    # a verified account is not taken over again: a second link keeps password and sessions
    assert _post(a, "/magic-link", key, {"email": victim}).status_code == 200
    again = _post(
        b,
        "/magic-link/verify",
        key,
        {"token": link_token(wait_for_subject(inbox, victim, SIGN_IN_SUBJECT))},
    )
    assert again.status_code == 200, again.text
    assert _works(cluster, key, victim_session) == ALIVE
    assert _sign_in(c, key, victim, "victim-own-password")


def test_the_person_who_signed_up_keeps_the_password_confirming_with_their_session(
    cluster: GatewayCluster, project: dict[str, Any], smtp: tuple[Inbox, int, Path]
) -> None:
    inbox, _, _ = smtp
    key = project["public_key"]
    a, b, _ = cluster.urls
    address = _email()
    session = _sign_up(a, key, address, "my-own-password")["session"]["token"]
    mail = wait_for_subject(inbox, address, VERIFY_SUBJECT)
    confirmed = _post(b, "/magic-link/verify", key, {"token": link_token(mail)}, token=session)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["data"]["user"]["emailVerified"] is True
    assert _works(cluster, key, session) == ALIVE
    assert _sign_in(b, key, address, "my-own-password")


# --- password change and reset -------------------------------------------------------------------


def test_password_change_needs_the_current_one_and_ends_the_other_sessions(
    cluster: GatewayCluster, project: dict[str, Any], pg_url: str, smtp: tuple[Inbox, int, Path]
) -> None:
    inbox, _, _ = smtp
    key = project["public_key"]
    a, b, c = cluster.urls
    address = _email()
    signed_up = _sign_up(a, key, address, "first-password")
    mine = _sign_in(b, key, address, "first-password")
    elsewhere = signed_up["session"]["token"]
    elsewhere_next = _refresh(c, key, elsewhere)

    for body, status, code in [
        ({"password": "second-password"}, 400, "VALIDATION_ERROR"),  # no current password
        ({"password": "short", "currentPassword": "first-password"}, 400, "WEAK_PASSWORD"),
        ({"password": "second-password", "currentPassword": "wrong"}, 401, "INVALID_CREDENTIALS"),
        ({"password": "x" * 2000, "currentPassword": "first-password"}, 400, "VALIDATION_ERROR"),
        ({"password": 5, "currentPassword": "first-password"}, 400, "VALIDATION_ERROR"),
    ]:
        r = _post(c, "/password", key, body, token=mine)
        assert r.status_code == status and _code(r) == code, (body, r.text)
    assert _code(_post(c, "/password", key, {"password": "second-password"})) == (
        "SESSION_REQUIRED"
    )
    changed = _post(
        a,
        "/password",
        key,
        {"password": "second-password", "currentPassword": "first-password"},
        token=mine,
    )
    assert changed.status_code == 200, changed.text
    assert changed.headers["cache-control"] == "no-store"
    assert _works(cluster, key, mine) == ALIVE
    for token in (elsewhere, elsewhere_next):
        assert _works(cluster, key, token) == DEAD
    old = _post(b, "/sign-in", key, {"email": address, "password": "first-password"})
    assert old.status_code == 401
    assert _sign_in(b, key, address, "second-password")

    # after `gateway auth force-reset`, the way back: a magic link, then a new password
    user_id = signed_up["user"]["id"]
    reset = run_cli(pg_url, "auth", "force-reset", project["id"], user_id)
    assert reset.returncode == 0, reset.stderr
    assert _works(cluster, key, mine) == DEAD
    assert _post(a, "/magic-link", key, {"email": address}).status_code == 200
    link = link_token(wait_for_subject(inbox, address, SIGN_IN_SUBJECT))
    back = _post(b, "/magic-link/verify", key, {"token": link})
    assert back.status_code == 200, back.text
    fresh = back.json()["data"]["session"]["token"]
    assert (
        _post(c, "/password", key, {"password": "third-password"}, token=fresh).status_code == 200
    )
    assert _sign_in(a, key, address, "third-password")


def test_a_magic_link_session_older_than_ten_minutes_needs_the_current_password(
    cluster: GatewayCluster, project: dict[str, Any], db: psycopg.Connection[Any]
) -> None:
    key = project["public_key"]
    a, b, _ = cluster.urls
    address = _email()
    _sign_up(a, key, address, "first-password")
    token = _sign_in(b, key, address, "first-password")
    db.execute(
        "UPDATE gateway.auth_sessions SET via = 'magic_link', "
        "created_at = now() - interval '11 minutes' WHERE token_hash = %s",
        [token_hash(token)],
    )
    r = _post(a, "/password", key, {"password": "second-password"}, token=token)
    assert r.status_code == 400 and _code(r) == "VALIDATION_ERROR"
    db.execute(
        "UPDATE gateway.auth_sessions SET created_at = now() - interval '9 minutes' "
        "WHERE token_hash = %s",
        [token_hash(token)],
    )
    assert (
        _post(a, "/password", key, {"password": "second-password"}, token=token).status_code == 200
    )


def test_password_attempts_are_throttled_per_user_across_tokens(
    cluster: GatewayCluster, project: dict[str, Any]
) -> None:
    """Ten wrong current passwords, then 429 — also through a refreshed token (the bucket
    is the user's, not the token's)."""
    key = project["public_key"]
    a, b, c = cluster.urls
    address = _email()
    token = _sign_up(a, key, address, "the-password")["session"]["token"]
    statuses = []
    for i in range(10):
        body = {"password": "new-password", "currentPassword": f"wrong-{i}"}
        statuses.append(_post(cluster.urls[i % 3], "/password", key, body, token=token).status_code)
    assert statuses == [401] * 10
    other = _refresh(b, key, token)
    body = {"password": "new-password", "currentPassword": "the-password"}
    limited = _post(c, "/password", key, body, token=other)
    assert limited.status_code == 429 and _code(limited) == "RATE_LIMIT"
    assert int(limited.headers["retry-after"]) >= 1


# --- sessions as families ------------------------------------------------------------------------


def test_the_refresh_fork_after_sign_out_is_refused(
    cluster: GatewayCluster, project: dict[str, Any]
) -> None:
    """The report: within the grace, the old token refreshed twice more after sign-out,
    minting two new 7-day sessions. Sign-out now ends the family."""
    key = project["public_key"]
    a, b, c = cluster.urls
    address = _email()
    old = _sign_up(a, key, address, "family-password")["session"]["token"]
    current = _refresh(b, key, old)  # old stays in its 30 s grace
    assert _works(cluster, key, old) == ALIVE
    out = _post(c, "/sign-out", key, token=current)
    assert out.status_code == 200 and out.json()["data"] == {"success": True}
    for url in (a, b):  # twice, on two instances, within the grace
        forked = _post(url, "/refresh", key, token=old)
        assert forked.status_code == 401 and _code(forked) == "SESSION_NOT_FOUND", forked.text
    for token in (old, current):
        assert _works(cluster, key, token) == DEAD

    # signing out with the OLD token (in its grace) ends the newer one too
    first = _sign_in(a, key, address, "family-password")
    second = _refresh(b, key, first)
    third = _refresh(c, key, second)
    unrelated = _sign_in(c, key, address, "family-password")
    assert _post(a, "/sign-out", key, token=first).status_code == 200
    for token in (first, second, third):
        assert _works(cluster, key, token) == DEAD
    assert _works(cluster, key, unrelated) == ALIVE


def _expire(db: psycopg.Connection[Any], token: str) -> None:
    """The session's time (or its refresh grace) has passed, as the database sees it."""
    db.execute(
        "UPDATE gateway.auth_sessions SET expires_at = now() - interval '1 second' "
        "WHERE token_hash = %s",
        [token_hash(token)],
    )


def test_a_rotated_token_presented_after_its_grace_ends_the_family(
    cluster: GatewayCluster, project: dict[str, Any], db: psycopg.Connection[Any]
) -> None:
    key = project["public_key"]
    a, b, c = cluster.urls
    address = _email()
    stolen = _sign_up(a, key, address, "reuse-password")["session"]["token"]
    legit = _refresh(b, key, stolen)
    legit = _refresh(c, key, legit)
    other_device = _sign_in(a, key, address, "reuse-password")
    # the grace of the first rotation has passed
    _expire(db, stolen)
    reused = _post(c, "/refresh", key, token=stolen)
    assert reused.status_code == 401 and _code(reused) == "SESSION_NOT_FOUND"
    assert _works(cluster, key, legit) == DEAD
    assert _works(cluster, key, other_device) == ALIVE
    row = db.execute(
        "SELECT f.revoked_reason FROM gateway.auth_session_families f "
        "JOIN gateway.auth_sessions s ON s.family_id = f.id WHERE s.token_hash = %s",
        [token_hash(legit)],
    ).fetchone()
    assert row is not None and row["revoked_reason"] == "reuse"
    # an expired session that was never rotated is just expired (no reuse)
    _expire(db, other_device)
    expired = _post(a, "/refresh", key, token=other_device)
    assert expired.status_code == 401 and _code(expired) == "SESSION_EXPIRED"


def test_global_sign_out_ends_every_session_of_the_user_on_every_instance(
    cluster: GatewayCluster, project: dict[str, Any]
) -> None:
    key = project["public_key"]
    a, b, c = cluster.urls
    address = _email()
    mine = _sign_up(a, key, address, "global-password")["session"]["token"]
    others = [_sign_in(url, key, address, "global-password") for url in cluster.urls]
    others.append(_refresh(c, key, others[0]))
    someone_else = _sign_up(b, key, _email(), "global-password")["session"]["token"]

    bad = _post(b, "/sign-out", key, {"scope": "everywhere"}, token=mine)
    assert bad.status_code == 400 and _code(bad) == "VALIDATION_ERROR"
    # the default is the current session's family only
    assert _post(b, "/sign-out", key, {"scope": "local"}, token=others[1]).status_code == 200
    assert _works(cluster, key, others[1]) == DEAD
    assert _works(cluster, key, others[2]) == ALIVE

    out = _post(b, "/sign-out", key, {"scope": "global"}, token=mine)
    assert out.status_code == 200 and out.json()["data"] == {"success": True}
    for token in [mine, *others]:
        assert _works(cluster, key, token) == DEAD
    assert _works(cluster, key, someone_else) == ALIVE
    # a dead session can't sign anyone out everywhere
    again = _post(c, "/sign-out", key, {"scope": "global"}, token=mine)
    assert again.status_code == 401 and _code(again) == "SESSION_NOT_FOUND"


# --- the client's address behind proxies ---------------------------------------------------------


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_a_spoofed_forwarded_for_entry_does_not_escape_the_sign_in_throttle(
    cluster: GatewayCluster, project: dict[str, Any], hops: int
) -> None:
    """14 wrong passwords from one client, each with a different left-most
    ``X-Forwarded-For`` entry of its own making, behind ``hops`` trusted proxies (the
    test client is the last one): the throttle sees one address, so 10 × 401 then 429."""
    key = project["public_key"]
    address = _email()
    _sign_up(cluster.urls[0], key, address, "right-password")
    client = f"198.51.100.{10 + hops}"
    inner_proxies = [f"10.0.0.{i}" for i in range(1, hops)]
    statuses = []
    for i in range(14):
        chain = ", ".join([f"203.0.113.{i}", client, *inner_proxies])
        r = _post(
            cluster.urls[i % 3],
            "/sign-in",
            key,
            {"email": address, "password": f"wrong-{i}"},
            **{"x-forwarded-for": chain},
        )
        statuses.append(r.status_code)
    assert statuses == [401] * 10 + [429] * 4, statuses
    # another client behind the same proxies has its own bucket
    chain = ", ".join(["198.51.100.200", *inner_proxies])
    r = _post(
        cluster.urls[0],
        "/sign-in",
        key,
        {"email": address, "password": "right-password"},
        **{"x-forwarded-for": chain},
    )
    assert r.status_code == 200, r.text
