"""A real browser on another origin: sign in, insert into an owner table, stream it.

Playwright drives the SYSTEM Chromium (Debian package ``chromium``; nothing is
downloaded). The page is served by a tiny HTTP server on another port than the gateway,
so every call is a cross-origin request through CORS, as for an app in production. The
page signs in through the auth API, inserts a note with its session, asks for a realtime
ticket and opens the stream with ``EventSource``; another user writes meanwhile. The page
must see only its own user's row events, and the session token must never appear in a
URL (requests the browser made) nor in the gateway's logs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.browser import browser_page, chromium_or_skip
from tests.support.browser import page_server as serve_pages
from tests.support.owner_rows import NOTES_TABLE, insert_note

AUTH = "/v1/inhouse/auth"
PASSWORD = "correct horse battery"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>notes</title></head>
<body><pre id="log"></pre>
<script>
const GATEWAY = %(gateway)s, KEY = %(key)s, EMAIL = %(email)s, PASSWORD = %(password)s;
window.events = [];
window.failures = [];
let session = null;  // kept in memory: never in a URL, never in storage

async function call(path, body) {
  const response = await fetch(GATEWAY + path, {
    method: "POST",
    headers: Object.assign({"content-type": "application/json", "x-api-key": KEY},
                           session ? {"authorization": "Bearer " + session} : {}),
    body: JSON.stringify(body || {}),
  });
  const json = await response.json();
  if (!response.ok) window.failures.push([path, response.status, json]);
  return json;
}

window.insert = async (body) =>
  call("/v1/inhouse/db/query", {query: {operation: "insert", table: "notes", data: {body}}});

window.start = async () => {
  const signedIn = await call("/v1/inhouse/auth/sign-in", {email: EMAIL, password: PASSWORD});
  session = signedIn.data.session.token;
  window.userId = signedIn.data.user.id;
  await window.insert("before the stream");
  const ticket = await call("/v1/inhouse/db/realtime/ticket");
  const source = new EventSource(GATEWAY + "/v1/inhouse/db/realtime?table=notes&ticket="
                                 + encodeURIComponent(ticket.data.ticket));
  for (const kind of ["insert", "update", "delete", "error"]) {
    source.addEventListener(kind, (e) => window.events.push(
      Object.assign({kind}, JSON.parse(e.data))));
  }
  await new Promise((resolve, reject) => {
    source.onopen = resolve;
    source.onerror = () => reject(new Error("stream failed"));
  });
  window.source = source;
  return window.userId;
};
</script></body></html>
"""


@pytest.fixture
def page_server() -> Iterator[tuple[str, dict[str, bytes | tuple[bytes, str]]]]:
    """A page on another origin (its own port); ``content["/"]`` is what it serves."""
    with serve_pages() as served:
        yield served


def test_browser_sees_only_its_users_rows(
    make_project: Any,
    gateway_cluster: Any,
    page_server: tuple[str, dict[str, bytes | tuple[bytes, str]]],
) -> None:
    sync_playwright = chromium_or_skip()
    origin, content = page_server
    cluster = gateway_cluster(1, env={"GATEWAY_CORS_ORIGINS": origin})
    gateway = cluster.urls[0]
    project = make_project(table=NOTES_TABLE)
    key = project["public_key"]
    alice_email = f"alice-{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=gateway, timeout=30) as http:
        for email in (alice_email, f"bob-{uuid.uuid4().hex[:8]}@example.com"):
            r = http.post(AUTH + "/sign-up", json={"email": email, "password": PASSWORD},
                          headers={"x-api-key": key})  # fmt: skip
            if r.status_code == 404:
                pytest.skip("the auth API (/v1/inhouse/auth) is not on this branch")
            assert r.status_code == 200, r.text
            bob_token = r.json()["data"]["session"]["token"]
    content["/"] = (
        PAGE
        % {
            "gateway": json.dumps(gateway),
            "key": json.dumps(key),
            "email": json.dumps(alice_email),
            "password": json.dumps(PASSWORD),
        }
    ).encode()

    def bob_writes(body: str) -> None:
        insert_note(gateway, key, bob_token, body)

    with browser_page(sync_playwright) as (page, urls):
        page.goto(origin + "/")
        alice_id = page.evaluate("window.start()")
        bob_writes("bob while alice streams")
        page.evaluate("window.insert('alice while streaming')")
        bob_writes("bob again")
        page.evaluate("window.insert('done')")
        page.wait_for_function(
            "window.events.some(e => e.row && e.row.body === 'done')", timeout=20_000
        )
        events = page.evaluate("window.events")
        failures = page.evaluate("window.failures")
        session = page.evaluate("session")

    assert failures == []
    assert [(e["kind"], e["row"]["body"]) for e in events] == [
        ("insert", "alice while streaming"),
        ("insert", "done"),
    ]
    assert all(e["row"]["user_id"] == alice_id for e in events)
    # cross-origin: the page's origin is not the gateway's
    assert origin.rsplit(":", 1)[1] != gateway.rsplit(":", 1)[1]
    # the session never appears in a URL the browser asked for, nor in the gateway's logs
    assert session and any("ticket=" in u for u in urls)
    assert not [u for u in urls if session in u]
    assert session not in cluster.output()
