"""The auth API on real ``gateway serve`` processes sharing one real PostgreSQL.

One module-wide cluster of three instances, configured with a real local SMTP server
(aiosmtpd, STARTTLS with a throwaway certificate, AUTH LOGIN) so magic links are mailed,
received and followed. Refresh runs with no grace (``GATEWAY_AUTH_REFRESH_GRACE_S=0``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from gateway.auth.keys import generate_key
from gateway.auth.tokens import token_hash
from gateway.db.localdb import free_port
from tests.support.admission import fresh_window
from tests.support.cli import assert_refused, cli_json, run_cli
from tests.support.harness import ClusterStarter, GatewayCluster
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, Inbox, smtp_env

AUTH = "/v1/inhouse/auth"


@pytest.fixture(scope="module")
def cluster(module_cluster: ClusterStarter, smtp: tuple[Inbox, int, Path]) -> GatewayCluster:
    _, port, cert = smtp
    env = {
        **smtp_env(port, cert),
        "GATEWAY_AUTH_REFRESH_GRACE_S": "0",
        "GATEWAY_POOL_MAX": "6",
        # the throttles key on the client IP as the request log computes it
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
        "GATEWAY_LOG_FLUSH_MS": "50",
    }
    return module_cluster(3, env=env)


def _post(
    url: str,
    path: str,
    key: str,
    body: Any = None,
    token: str | None = None,
    headers_extra: dict[str, str] | None = None,
) -> httpx.Response:
    headers = {"x-api-key": key, **(headers_extra or {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(url + AUTH + path, json=body, headers=headers, timeout=30)


def _get_user(url: str, key: str, token: str | None) -> httpx.Response:
    headers = {"x-api-key": key}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(url + AUTH + "/user", headers=headers, timeout=30)


def _email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.test"


def _error(response: httpx.Response) -> str:
    body = response.json()
    assert body["ok"] is False, body
    return body["error"]["code"]


# --- sessions across instances ----------------------------------------------------------


def test_session_from_one_instance_works_on_another_and_sign_out_on_a_third_ends_it(
    cluster: GatewayCluster, make_project: Any
) -> None:
    project = make_project()
    key = project["public_key"]
    a, b, c = cluster.urls
    address = _email()
    signed_up = _post(
        a, "/sign-up", key, {"email": f"  {address.upper()} ", "password": "hunter22!"}
    )
    assert signed_up.status_code == 200, signed_up.text
    assert signed_up.headers["cache-control"] == "no-store"
    data = signed_up.json()["data"]
    assert data["user"]["email"] == address
    assert data["user"]["projectId"] == project["id"]
    assert data["user"]["provider"] == "email"
    assert data["user"]["emailVerified"] is False
    token = data["session"]["token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)

    seen = _get_user(b, key, token)
    assert seen.status_code == 200, seen.text
    assert seen.json()["data"]["user"]["id"] == data["user"]["id"]
    assert seen.headers["cache-control"] == "no-store"

    # signing in on another instance gives a second, independent session
    signed_in = _post(c, "/sign-in", key, {"email": address, "password": "hunter22!"})
    assert signed_in.status_code == 200, signed_in.text
    second = signed_in.json()["data"]["session"]["token"]
    assert second != token
    assert signed_in.json()["data"]["user"]["lastSignIn"] is not None

    out = _post(c, "/sign-out", key, token=token)
    assert out.status_code == 200 and out.json() == {"ok": True, "data": {"success": True}}
    for url in cluster.urls:
        refused = _get_user(url, key, token)
        assert refused.status_code == 401 and _error(refused) == "SESSION_NOT_FOUND"
        assert _get_user(url, key, second).status_code == 200
    # signing out an unknown token still answers success; no token at all is refused
    assert _post(a, "/sign-out", key, token="nonsense").json()["data"] == {"success": True}
    missing = _post(a, "/sign-out", key)
    assert missing.status_code == 401 and _error(missing) == "SESSION_REQUIRED"
    # a session belongs to its project: another project's key doesn't find it
    other = make_project()
    foreign = _get_user(b, other["public_key"], second)
    assert foreign.status_code == 401 and _error(foreign) == "SESSION_NOT_FOUND"


def test_twelve_wrong_sign_ins_over_three_instances_are_exactly_ten_401_then_429(
    cluster: GatewayCluster, make_project: Any
) -> None:
    project = make_project()
    key = project["server_key"]
    address = _email()
    assert (
        _post(
            cluster.urls[0], "/sign-up", key, {"email": address, "password": "right-pass"}
        ).status_code
        == 200
    )

    def attempt(i: int) -> httpx.Response:
        url = cluster.urls[i % 3]
        return _post(url, "/sign-in", key, {"email": address, "password": f"wrong-{i}"})

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(attempt, range(12)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [401] * 10 + [429] * 2, statuses
    for r in answers:
        assert _error(r) == ("INVALID_CREDENTIALS" if r.status_code == 401 else "RATE_LIMIT")
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
    # the right password is refused too now: the bucket is (project, email, IP)
    late = _post(cluster.urls[1], "/sign-in", key, {"email": address, "password": "right-pass"})
    assert late.status_code == 429
    # another email from the same IP has its own bucket
    other = _post(cluster.urls[2], "/sign-in", key, {"email": _email(), "password": "whatever1"})
    assert other.status_code == 401 and _error(other) == "INVALID_CREDENTIALS"


# --- refresh -----------------------------------------------------------------------------


def test_refresh_gives_a_new_token_and_the_old_one_stops_working_everywhere(
    cluster: GatewayCluster, make_project: Any, db: psycopg.Connection[Any]
) -> None:
    key = make_project()["public_key"]
    a, b, c = cluster.urls
    body = {"email": _email(), "password": "a-long-password"}
    old = _post(a, "/sign-up", key, body).json()["data"]["session"]["token"]
    refreshed = _post(b, "/refresh", key, token=old)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.headers["cache-control"] == "no-store"
    session = refreshed.json()["data"]["session"]
    assert session["token"] != old and session["expiresAt"].endswith("Z")
    for url in cluster.urls:
        assert _get_user(url, key, session["token"]).status_code == 200
        gone = _get_user(url, key, old)
        assert gone.status_code == 401 and _error(gone) == "SESSION_NOT_FOUND"
    again = _post(c, "/refresh", key, token=old)
    assert again.status_code == 401 and _error(again) == "SESSION_NOT_FOUND"
    assert _error(_post(c, "/refresh", key)) == "SESSION_REQUIRED"
    # the rotated token came back (no grace here): reuse, its whole family ended
    for url in cluster.urls:
        reused = _get_user(url, key, session["token"])
        assert reused.status_code == 401 and _error(reused) == "SESSION_NOT_FOUND"

    # an expired session says so, on /user and on /refresh
    signed_in = _post(a, "/sign-in", key, body)
    session = signed_in.json()["data"]["session"]
    db.execute(
        "UPDATE gateway.auth_sessions SET expires_at = now() - interval '1 second' "
        "WHERE token_hash = %s",
        [token_hash(session["token"])],
    )
    expired = _get_user(c, key, session["token"])
    assert expired.status_code == 401 and _error(expired) == "SESSION_EXPIRED"
    assert _error(_post(a, "/refresh", key, token=session["token"])) == "SESSION_EXPIRED"


# --- magic links through a real SMTP server ----------------------------------------------


def test_magic_link_is_mailed_over_starttls_and_following_it_signs_in_once(
    cluster: GatewayCluster,
    make_project: Any,
    smtp: tuple[Inbox, int, Path],
    db: psycopg.Connection[Any],
) -> None:
    inbox, _, _ = smtp
    key = make_project()["public_key"]
    a, b, c = cluster.urls
    address = _email()
    asked = _post(a, "/magic-link", key, {"email": address})
    assert asked.status_code == 200, asked.text
    data = asked.json()["data"]
    assert "token" not in data and data["expiresAt"] and data["message"]
    mail = inbox.wait_for(address)
    assert mail["From"] == "auth@example.test"
    text = mail.get_payload(decode=True).decode()
    link = re.search(r"https://app\.example\.test/auth/magic-link\?token=([A-Za-z0-9_-]+)", text)
    assert link is not None, text
    token = link.group(1)

    verified = _post(b, "/magic-link/verify", key, {"token": token})
    assert verified.status_code == 200, verified.text
    user = verified.json()["data"]["user"]
    assert user["email"] == address and user["emailVerified"] is True
    assert user["provider"] == "magic_link"
    session = verified.json()["data"]["session"]["token"]
    assert _get_user(c, key, session).json()["data"]["user"]["id"] == user["id"]

    reused = _post(c, "/magic-link/verify", key, {"token": token})
    assert reused.status_code == 401 and _error(reused) == "MAGIC_LINK_INVALID"

    # an expired link: the second request for the same address, aged in the database
    assert _post(a, "/magic-link", key, {"email": address}).status_code == 200
    db.execute(
        "UPDATE gateway.auth_magic_links SET expires_at = now() - interval '1 second' "
        "WHERE email = %s AND used_at IS NULL",
        [address],
    )
    second = [m for m in inbox.messages if m["To"] == address]
    deadline = 50
    while len(second) < 2 and deadline:
        inbox.wait_for(address)
        second = [m for m in inbox.messages if m["To"] == address]
        deadline -= 1
    later = re.search(r"token=([A-Za-z0-9_-]+)", second[-1].get_payload(decode=True).decode())
    assert later is not None
    stale = _post(b, "/magic-link/verify", key, {"token": later.group(1)})
    assert stale.status_code == 401 and _error(stale) == "MAGIC_LINK_EXPIRED"


def test_magic_link_requests_are_throttled_per_email_across_instances(
    cluster: GatewayCluster, make_project: Any
) -> None:
    key = make_project()["public_key"]
    address = _email()
    statuses = [
        _post(cluster.urls[i % 3], "/magic-link", key, {"email": address}).status_code
        for i in range(7)
    ]
    assert statuses == [200] * 5 + [429] * 2


# --- keys, routes, headers -----------------------------------------------------------------


def test_keys_routes_and_headers(cluster: GatewayCluster, make_project: Any, pg_url: str) -> None:
    from gateway.control.projects import connect

    project = make_project()
    url = cluster.urls[0]
    body = {"email": _email(), "password": "whatever1"}
    missing = httpx.post(url + AUTH + "/sign-in", json=body, timeout=30)
    assert missing.status_code == 401 and _error(missing) == "API_KEY_REQUIRED"
    assert missing.headers["cache-control"] == "no-store"
    # the key travels in x-api-key only: Bearer is the session
    bearer_only = httpx.post(
        url + AUTH + "/sign-in",
        json=body,
        headers={"Authorization": f"Bearer {project['public_key']}"},
        timeout=30,
    )
    assert _error(bearer_only) == "API_KEY_REQUIRED"
    bad = _post(url, "/sign-in", "sheen_pk_" + "x" * 40, body)
    assert bad.status_code == 401 and _error(bad) == "INVALID_API_KEY"
    admin = generate_key("admin")  # the CLI makes none; the admission statement knows them
    with connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO gateway.api_keys (project_id, key_prefix, key_hash, key_type) "
            "VALUES (%s, %s, %s, 'admin')",
            [project["id"], admin.prefix, admin.key_hash],
        )
    admin_key = admin.key
    refused = _post(url, "/sign-in", admin_key, body)
    assert refused.status_code == 403 and _error(refused) == "INSUFFICIENT_SCOPE"
    unknown = httpx.post(url + AUTH + "/nope", headers={"x-api-key": "k"}, timeout=30)
    assert unknown.status_code == 404 and _error(unknown) == "NOT_FOUND"
    assert unknown.headers["cache-control"] == "no-store"
    base = httpx.get(url + AUTH, timeout=30)
    assert base.status_code == 404 and base.headers["cache-control"] == "no-store"
    wrong_method = httpx.get(url + AUTH + "/sign-in", timeout=30)
    assert wrong_method.status_code == 405 and _error(wrong_method) == "METHOD_NOT_ALLOWED"


# --- malformed bodies ----------------------------------------------------------------------

GOOD = "a-fine-password"
LONG = "x" * 1025
MALFORMED: list[tuple[str, Any, int, str]] = [
    ("/sign-up", b"", 400, "VALIDATION_ERROR"),
    ("/sign-up", b"not json", 400, "VALIDATION_ERROR"),
    ("/sign-up", b"[]", 400, "VALIDATION_ERROR"),
    ("/sign-up", b"null", 400, "VALIDATION_ERROR"),
    ("/sign-up", b'"a string"', 400, "VALIDATION_ERROR"),
    ("/sign-up", b"\xff\xfe\x00", 400, "VALIDATION_ERROR"),
    ("/sign-up", b'{"email": "\\ud800@x.co", "password": "longenough"}', 400, "VALIDATION_ERROR"),
    ("/sign-up", b"[" * 2000 + b"]" * 2000, 400, "VALIDATION_ERROR"),
    ("/sign-up", {}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": "a@b.co"}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"password": GOOD}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": 5, "password": GOOD}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": ["a@b.co"], "password": GOOD}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": {"x": 1}, "password": GOOD}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": "not-an-email", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-up", {"email": "a@b", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-up", {"email": "a b@c.de", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-up", {"email": "a@@b.de", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-up", {"email": "   ", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-up", {"email": "a\u0000b@c.de", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-up", {"email": "a\tb@c.de", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-up", {"email": "a" * 320 + "@b.co", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-up", {"email": "a\u2003b@c.de", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-up", {"email": "a@b.co", "password": "short"}, 400, "WEAK_PASSWORD"),
    ("/sign-up", {"email": "a@b.co", "password": "ünïcödé"}, 400, "WEAK_PASSWORD"),
    ("/sign-up", {"email": "a@b.co", "password": LONG}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": "a@b.co", "password": "é" * 513}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": "a@b.co", "password": 12345678}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": "a@b.co", "password": True}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": "a@b.co", "password": {"p": GOOD}}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": "a@b.co", "password": GOOD, "metadata": "s"}, 400, "VALIDATION_ERROR"),
    ("/sign-up", {"email": "a@b.co", "password": GOOD, "metadata": [1]}, 400, "VALIDATION_ERROR"),
    (
        "/sign-up",
        {"email": "a@b.co", "password": GOOD, "metadata": {"k": "\u0000"}},
        400,
        "VALIDATION_ERROR",
    ),
    (
        "/sign-up",
        {"email": "a@b.co", "password": GOOD, "metadata": {"k": "v" * 20_000}},
        400,
        "VALIDATION_ERROR",
    ),
    ("/sign-up", {"email": "a@b.co", "password": "p" * 40_000}, 413, "PAYLOAD_TOO_LARGE"),
    ("/sign-in", {}, 400, "VALIDATION_ERROR"),
    ("/sign-in", {"email": "a@b.co", "password": ""}, 400, "VALIDATION_ERROR"),
    ("/sign-in", {"email": "a@b.co", "password": None}, 400, "VALIDATION_ERROR"),
    ("/sign-in", {"email": "nope", "password": GOOD}, 400, "INVALID_EMAIL"),
    ("/sign-in", {"email": "a@b.co", "password": LONG}, 400, "VALIDATION_ERROR"),
    ("/sign-in", {"email": "a@b.co", "password": ["x"]}, 400, "VALIDATION_ERROR"),
    ("/magic-link", {}, 400, "VALIDATION_ERROR"),
    ("/magic-link", {"email": 1}, 400, "VALIDATION_ERROR"),
    ("/magic-link", {"email": "bad"}, 400, "INVALID_EMAIL"),
    ("/magic-link", b"{", 400, "VALIDATION_ERROR"),
    ("/magic-link/verify", {}, 400, "VALIDATION_ERROR"),
    ("/magic-link/verify", {"token": None}, 400, "VALIDATION_ERROR"),
    ("/magic-link/verify", {"token": 42}, 400, "VALIDATION_ERROR"),
    ("/magic-link/verify", {"token": ["t"]}, 400, "VALIDATION_ERROR"),
    ("/magic-link/verify", {"token": "t" * 500}, 401, "MAGIC_LINK_INVALID"),
    ("/magic-link/verify", {"token": "no\u0000such"}, 401, "MAGIC_LINK_INVALID"),
    ("/magic-link/verify", {"token": "never-issued"}, 401, "MAGIC_LINK_INVALID"),
]


def test_malformed_auth_bodies_are_4xx_with_their_codes(
    cluster: GatewayCluster, make_project: Any
) -> None:
    assert len(MALFORMED) >= 30
    key = make_project()["public_key"]
    url = cluster.urls[1]
    failures = []
    for path, body, status, code in MALFORMED:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = httpx.post(
            url + AUTH + path,
            headers={"x-api-key": key, "content-type": "application/json"},
            timeout=30,
            **kwargs,
        )
        got = (response.status_code, response.json().get("error", {}).get("code"))
        assert response.headers["cache-control"] == "no-store"
        if got != (status, code):
            failures.append((path, repr(body)[:80], got))
    # bad session headers
    for authorization, code in [
        ("Basic abc", "SESSION_REQUIRED"),
        ("Bearer", "SESSION_REQUIRED"),
        ("Bearer " + "t" * 1000, "SESSION_NOT_FOUND"),
        ("Bearer not-a-session", "SESSION_NOT_FOUND"),
    ]:
        response = httpx.get(
            url + AUTH + "/user",
            headers={"x-api-key": key, "Authorization": authorization},
            timeout=30,
        )
        if (response.status_code, _error(response)) != (401, code):
            failures.append(("/user", authorization[:30], response.status_code))
    assert not failures, failures
    assert "Traceback" not in cluster.output()


# --- secrets are never stored or logged in clear -------------------------------------------


def _all_rows_text(conn: psycopg.Connection[Any]) -> str:
    tables = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
    ).fetchall()
    parts = []
    for row in tables:
        schema, table = row["table_schema"], row["table_name"]
        query = f'SELECT t::text AS r FROM "{schema}"."{table}" t'
        parts.extend(r["r"] for r in conn.execute(query).fetchall())  # type: ignore[arg-type]
    return "\n".join(parts)


def test_tokens_and_passwords_are_never_stored_or_logged_in_clear(
    cluster: GatewayCluster,
    make_project: Any,
    smtp: tuple[Inbox, int, Path],
    db: psycopg.Connection[Any],
) -> None:
    inbox, _, _ = smtp
    key = make_project()["public_key"]
    a, b, c = cluster.urls
    address = _email()
    password = f"pw-{uuid.uuid4().hex}"
    secrets_seen = [password, SMTP_PASSWORD]
    up = _post(a, "/sign-up", key, {"email": address, "password": password}).json()["data"]
    secrets_seen.append(up["session"]["token"])
    wrong = f"wrong-{uuid.uuid4().hex}"
    assert _post(b, "/sign-in", key, {"email": address, "password": wrong}).status_code == 401
    secrets_seen.append(wrong)
    signed_in = _post(b, "/sign-in", key, {"email": address, "password": password}).json()
    secrets_seen.append(signed_in["data"]["session"]["token"])
    fresh = _post(c, "/refresh", key, token=signed_in["data"]["session"]["token"]).json()
    secrets_seen.append(fresh["data"]["session"]["token"])
    assert _post(a, "/magic-link", key, {"email": address}).status_code == 200
    link = re.search(
        r"token=([A-Za-z0-9_-]+)", inbox.wait_for(address).get_payload(decode=True).decode()
    )
    assert link is not None
    secrets_seen.append(link.group(1))
    # with a live session of the account, verifying keeps the password (docs/auth.md)
    verified = _post(
        b,
        "/magic-link/verify",
        key,
        {"token": link.group(1)},
        token=fresh["data"]["session"]["token"],
    ).json()
    secrets_seen.append(verified["data"]["session"]["token"])
    _post(c, "/sign-out", key, token=fresh["data"]["session"]["token"])

    stored = _all_rows_text(db)
    assert token_hash(up["session"]["token"]) in stored  # the hash is what is kept
    logs = cluster.output()
    for secret in secrets_seen:
        assert secret not in stored
        assert secret not in logs
    assert "Traceback" not in logs
    row = db.execute(
        "SELECT password_hash FROM gateway.auth_users WHERE email = %s", [address]
    ).fetchone()
    assert row is not None and row["password_hash"].startswith("$argon2id$")


# --- the admin CLI and imports ---------------------------------------------------------------

NODE_SCRYPT = (
    "scrypt$16384$8$1$WzoL0KTpErXOnXU-XdF9eA$"
    "14Esajkba7eT14DKuidtjHaY-k1DrQWxOEOXSfqXJLNXYOWQCZMn8ckA9qCxitYoXPurIkPl22e9V5TxWdkdIQ"
)  # the original's format, made by Node's crypto, password "correct horse"


def test_import_of_original_hashes_then_sign_in_rehashes_to_argon2id(
    cluster: GatewayCluster,
    make_project: Any,
    pg_url: str,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    project = make_project()
    key = project["public_key"]
    users = tmp_path / "users.jsonl"
    users.write_text(
        "\n".join(
            [
                json.dumps(
                    {
                        "email": "Old@Example.test",
                        "password_hash": NODE_SCRYPT,
                        "metadata": {"plan": "pro"},
                        "created_at": "2025-01-02T03:04:05.000Z",
                    }
                ),
                '{"email": "link-only@example.test", "password_hash": null}',
                "",
            ]
        )
    )
    result = cli_json(pg_url, "auth", "import", project["name"], "--file", str(users))
    assert result == {"project": project["name"], "imported": 2, "skipped": 0, "total": 2}
    again = cli_json(pg_url, "auth", "import", project["id"], "--file", str(users))
    assert again["imported"] == 0 and again["skipped"] == 2

    a, b, _ = cluster.urls
    signed_in = _post(
        a, "/sign-in", key, {"email": "old@example.test", "password": "correct horse"}
    )
    assert signed_in.status_code == 200, signed_in.text
    user = signed_in.json()["data"]["user"]
    assert user["metadata"] == {"plan": "pro"} and user["createdAt"].startswith(
        "2025-01-02T03:04:05"
    )
    stored = db.execute(
        "SELECT password_hash FROM gateway.auth_users WHERE id = %s", [user["id"]]
    ).fetchone()
    assert stored is not None and stored["password_hash"].startswith("$argon2id$")
    # the re-hashed password still works, the wrong one still doesn't
    assert (
        _post(
            b, "/sign-in", key, {"email": "old@example.test", "password": "correct horse"}
        ).status_code
        == 200
    )
    assert (
        _post(
            b, "/sign-in", key, {"email": "old@example.test", "password": "correct horsE"}
        ).status_code
        == 401
    )
    # a user without a password can't sign in with one
    nopw = _post(b, "/sign-in", key, {"email": "link-only@example.test", "password": "anything1"})
    assert nopw.status_code == 401 and _error(nopw) == "INVALID_CREDENTIALS"

    listed = cli_json(pg_url, "auth", "users", project["name"])
    assert sorted(u["email"] for u in listed["users"]) == [
        "link-only@example.test",
        "old@example.test",
    ]
    assert all(("password_hash" not in u and "passwordHash" not in u) for u in listed["users"])

    # refused input: one line, exit 2, nothing written
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"email": "new@example.test", "password_hash": "hunter2"}\n')
    assert_refused(run_cli(pg_url, "auth", "import", project["name"], "--file", str(bad)), "line 1")
    bad.write_text('{"email": "ok@example.test"}\nnot json\n')
    assert_refused(run_cli(pg_url, "auth", "import", project["name"], "--file", str(bad)), "line 2")
    assert db.execute(
        "SELECT count(*) AS n FROM gateway.auth_users WHERE project_id = %s", [project["id"]]
    ).fetchone() == {"n": 2}
    assert_refused(
        run_cli(pg_url, "auth", "import", project["name"], "--file", str(tmp_path / "missing")),
        "can't read",
    )


def test_cli_logout_and_force_reset_take_effect_on_the_next_request_everywhere(
    cluster: GatewayCluster, make_project: Any, pg_url: str
) -> None:
    project = make_project()
    key = project["public_key"]
    a, b, c = cluster.urls
    address = _email()
    up = _post(a, "/sign-up", key, {"email": address, "password": "first-password"}).json()["data"]
    user_id = up["user"]["id"]
    second = _post(b, "/sign-in", key, {"email": address, "password": "first-password"}).json()
    tokens = [up["session"]["token"], second["data"]["session"]["token"]]
    for url in cluster.urls:  # warm: every instance has seen the sessions
        assert all(_get_user(url, key, t).status_code == 200 for t in tokens)

    out = cli_json(pg_url, "auth", "logout", project["name"], user_id)
    assert out == {"userId": user_id, "email": address, "revokedSessions": 2}
    for url in cluster.urls:
        assert all(_error(_get_user(url, key, t)) == "SESSION_NOT_FOUND" for t in tokens)

    fresh = _post(c, "/sign-in", key, {"email": address, "password": "first-password"}).json()
    reset = cli_json(pg_url, "auth", "force-reset", project["id"], user_id)
    assert reset["passwordResetRequired"] is True and reset["revokedSessions"] == 1
    assert _error(_get_user(a, key, fresh["data"]["session"]["token"])) == "SESSION_NOT_FOUND"
    refused = _post(b, "/sign-in", key, {"email": address, "password": "first-password"})
    assert refused.status_code == 401 and _error(refused) == "INVALID_CREDENTIALS"
    listed = cli_json(pg_url, "auth", "users", project["name"])["users"]
    assert listed[0]["passwordResetRequired"] is True and listed[0]["activeSessions"] == 0

    assert_refused(
        run_cli(pg_url, "auth", "logout", project["name"], "not-a-uuid"), "not a user id"
    )
    assert_refused(run_cli(pg_url, "auth", "logout", project["name"], str(uuid.uuid4())), "no user")
    assert_refused(run_cli(pg_url, "auth", "users", "no-such-project"), "no project")
    other = make_project()
    assert_refused(run_cli(pg_url, "auth", "force-reset", other["name"], user_id), "no user")


# --- client IP, sign-up throttle, request log -------------------------------------------------


def test_throttles_key_on_the_client_ip_the_request_log_uses(
    cluster: GatewayCluster, make_project: Any, db: psycopg.Connection[Any]
) -> None:
    project = make_project()
    key = project["public_key"]

    def sign_up(i: int, ip: str) -> httpx.Response:
        url = cluster.urls[i % 3]
        body = {"email": _email(), "password": "sign-up-pass"}
        return _post(url, "/sign-up", key, body, headers_extra={"x-forwarded-for": ip})

    statuses = [sign_up(i, "203.0.113.7").status_code for i in range(6)]
    assert statuses == [200] * 5 + [429]
    # another client behind the same (trusted) proxy has its own bucket
    other = sign_up(0, "203.0.113.8, 127.0.0.1")
    assert other.status_code == 200, other.text
    session_ips = {
        str(r["ip"])
        for r in db.execute(
            "SELECT ip FROM gateway.auth_sessions WHERE project_id = %s", [project["id"]]
        ).fetchall()
    }
    assert session_ips == {"203.0.113.7", "203.0.113.8"}
    # every auth request is a request of the project: in the request log, with that IP
    rows: list[Any] = []
    for _ in range(100):
        rows = db.execute(
            "SELECT path, status_code, error_code, host(client_ip) AS ip FROM gateway.request_log "
            "WHERE project_id = %s ORDER BY created_at",
            [project["id"]],
        ).fetchall()
        if len(rows) >= 7:
            break
        time.sleep(0.05)
    assert len(rows) == 7
    assert {r["path"] for r in rows} == {"/auth/sign-up"}
    assert [r["error_code"] for r in rows].count("RATE_LIMIT") == 1
    assert {r["ip"] for r in rows} == {"203.0.113.7", "203.0.113.8"}


# --- without SMTP: the link in the log; GATEWAY_AUTH_MAGIC_LINK_RETURN_TOKEN; refresh grace ----


def test_without_smtp_the_link_is_logged_and_return_token_answers_it(
    gateway_cluster: Any, make_project: Any, db: psycopg.Connection[Any]
) -> None:
    key = make_project()["public_key"]
    logged = gateway_cluster(1, env={"GATEWAY_AUTH_MAGIC_LINK_URL": "http://localhost:5173/in"})
    address = _email()
    asked = _post(logged.urls[0], "/magic-link", key, {"email": address})
    assert asked.status_code == 200 and "token" not in asked.json()["data"]
    found = None
    for _ in range(100):
        found = re.search(r"http://localhost:5173/in\?token=([A-Za-z0-9_-]+)", logged.output())
        if found:
            break
        time.sleep(0.05)
    assert found is not None, logged.output()
    verified = _post(logged.urls[0], "/magic-link/verify", key, {"token": found.group(1)})
    assert verified.status_code == 200 and verified.json()["data"]["user"]["email"] == address

    dev = gateway_cluster(1, env={"GATEWAY_AUTH_MAGIC_LINK_RETURN_TOKEN": "true"})
    url = dev.urls[0]
    data = _post(url, "/magic-link", key, {"email": address}).json()["data"]
    assert data["token"] and data["expiresAt"] and data["message"]
    session = _post(url, "/magic-link/verify", key, {"token": data["token"]}).json()["data"]
    old = session["session"]["token"]
    # default grace (10 s): right after a refresh the old token still works, briefly
    new = _post(url, "/refresh", key, token=old).json()["data"]["session"]["token"]
    assert _get_user(url, key, old).status_code == 200
    assert _get_user(url, key, new).status_code == 200
    left = db.execute(
        "SELECT expires_at - now() AS left FROM gateway.auth_sessions WHERE token_hash = %s",
        [token_hash(old)],
    ).fetchone()
    assert left is not None and left["left"].total_seconds() <= 10


# --- cleanup under the maintenance leader -----------------------------------------------------


def test_cleanup_deletes_past_windows_spent_links_and_dead_sessions(
    make_project: Any, pg_url: str, db: psycopg.Connection[Any]
) -> None:
    from gateway.auth import store

    project = make_project()
    pid = project["id"]
    user = db.execute(
        "INSERT INTO gateway.auth_users (project_id, email) VALUES (%s, %s) RETURNING id",
        [pid, _email()],
    ).fetchone()
    assert user is not None
    marker = uuid.uuid4().hex
    db.execute(
        "INSERT INTO gateway.auth_throttle (bucket, window_start) VALUES "
        "(%s, now() - interval '2 hours'), (%s, now())",
        [f"old:{marker}", f"new:{marker}"],
    )
    db.execute(
        "INSERT INTO gateway.auth_magic_links (project_id, email, token_hash, expires_at) "
        "VALUES (%s, 'a@b.co', %s, now() - interval '2 hours'), "
        "(%s, 'a@b.co', %s, now() + interval '5 minutes')",
        [pid, f"old{marker}", pid, f"new{marker}"],
    )
    family = db.execute(
        "INSERT INTO gateway.auth_session_families (project_id, user_id) VALUES (%s, %s) "
        "RETURNING id",
        [pid, user["id"]],
    ).fetchone()
    assert family is not None
    db.execute(
        "INSERT INTO gateway.auth_sessions "
        "(project_id, user_id, family_id, token_hash, expires_at, revoked_at) "
        "VALUES (%(p)s, %(u)s, %(f)s, %(a)s, now() - interval '2 days', NULL), "
        "(%(p)s, %(u)s, %(f)s, %(b)s, now() + interval '1 day', now() - interval '2 days'), "
        "(%(p)s, %(u)s, %(f)s, %(c)s, now() + interval '1 day', NULL)",
        {
            "p": pid,
            "u": user["id"],
            "f": family["id"],
            "a": f"a{marker}",
            "b": f"b{marker}",
            "c": f"c{marker}",
        },
    )

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            return await store.cleanup(conn, 600)

    assert asyncio.run(run()) >= 4
    left = db.execute(
        "SELECT (SELECT array_agg(bucket) FROM gateway.auth_throttle "
        "        WHERE bucket LIKE %s) AS t, "
        "(SELECT array_agg(token_hash) FROM gateway.auth_magic_links "
        "  WHERE token_hash LIKE %s) AS l, "
        "(SELECT array_agg(token_hash) FROM gateway.auth_sessions "
        "  WHERE token_hash LIKE %s) AS s",
        [f"%{marker}", f"%{marker}", f"%{marker}"],
    ).fetchone()
    assert left == {"t": [f"new:{marker}"], "l": [f"new{marker}"], "s": [f"c{marker}"]}


# --- races between instances -------------------------------------------------------------------


def test_a_link_verified_on_three_instances_at_once_signs_in_exactly_once(
    cluster: GatewayCluster, make_project: Any, smtp: tuple[Inbox, int, Path]
) -> None:
    inbox, _, _ = smtp
    key = make_project()["public_key"]
    address = _email()
    assert _post(cluster.urls[0], "/magic-link", key, {"email": address}).status_code == 200
    found = re.search(
        r"token=([A-Za-z0-9_-]+)", inbox.wait_for(address).get_payload(decode=True).decode()
    )
    assert found is not None
    token = found.group(1)
    with ThreadPoolExecutor(9) as pool:
        answers = list(
            pool.map(
                lambda i: _post(cluster.urls[i % 3], "/magic-link/verify", key, {"token": token}),
                range(9),
            )
        )
    assert sorted(r.status_code for r in answers) == [200] + [401] * 8
    assert {_error(r) for r in answers if r.status_code == 401} == {"MAGIC_LINK_INVALID"}


def test_one_email_signed_up_on_three_instances_at_once_exists_once(
    cluster: GatewayCluster, make_project: Any, db: psycopg.Connection[Any]
) -> None:
    project = make_project()
    address = _email()

    def sign_up(i: int) -> httpx.Response:
        # different client IPs: the sign-up throttle (5 per project and IP) stays out of it
        return _post(
            cluster.urls[i % 3],
            "/sign-up",
            project["public_key"],
            {"email": address, "password": f"password-{i}"},
            headers_extra={"x-forwarded-for": f"198.51.100.{i + 1}"},
        )

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(sign_up, range(6)))
    assert sorted(r.status_code for r in answers) == [200] + [409] * 5
    assert {_error(r) for r in answers if r.status_code == 409} == {"EMAIL_IN_USE"}
    count = db.execute(
        "SELECT count(*) AS n FROM gateway.auth_users WHERE project_id = %s", [project["id"]]
    ).fetchone()
    assert count == {"n": 1}


def test_auth_requests_count_against_the_project_rate_limit(
    cluster: GatewayCluster, make_project: Any, pg_url: str
) -> None:
    key = make_project(rate_limit_per_minute=3)["public_key"]
    # the four requests must fall in one minute window (a slow run crossing a window
    # boundary got a fresh allowance: 401 where the 429 belongs)
    with psycopg.connect(pg_url, autocommit=True, row_factory=dict_row) as db:
        fresh_window(db, 60, 20)
    answers = [
        _post(cluster.urls[i % 3], "/sign-in", key, {"email": _email(), "password": "whatever1"})
        for i in range(4)
    ]
    assert [r.status_code for r in answers] == [401, 401, 401, 429]
    assert _error(answers[3]) == "RATE_LIMIT_EXCEEDED"
    assert answers[3].headers["cache-control"] == "no-store"
    assert int(answers[3].headers["retry-after"]) >= 1


def test_smtp_without_starttls_is_refused_and_the_request_still_answers(
    gateway_cluster: Any, make_project: Any
) -> None:
    """``smtp://`` requires STARTTLS: against a server that doesn't offer it nothing is
    sent (no credentials in clear); the failure is logged without the link and the
    request answers 200, as in the original (the user asks again)."""
    pytest.importorskip("aiosmtpd", reason="aiosmtpd (dev dependency) is needed for mail tests")
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        key = make_project()["public_key"]
        env = {"GATEWAY_SMTP_URL": f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{port}"}
        one = gateway_cluster(1, env=env)
        address = _email()
        asked = _post(one.urls[0], "/magic-link", key, {"email": address})
        assert asked.status_code == 200, asked.text
        logs = ""
        for _ in range(100):
            logs = one.output()
            if "magic link mail to" in logs:
                break
            time.sleep(0.05)
        assert f"magic link mail to {address} failed" in logs
        assert inbox.messages == []
        assert "token=" not in logs and SMTP_PASSWORD not in logs
    finally:
        controller.stop()
