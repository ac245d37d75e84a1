"""The TypeScript client (clients/js) in a real browser, loaded from another origin.

Playwright drives the system Chromium (as ``test_owner_browser.py`` does). A small HTTP
server on its own port serves a page and the client's BUILT module (``clients/js/dist``,
ES modules imported by the page); the gateway is on another port, so every call is
cross-origin through CORS. The page signs up with the client, inserts into the owner
table ``notes``, subscribes to it (``EventSource`` with a ticket: the browser transport)
while another user writes, sees only its own rows, and signs out. A server key is
refused by ``createClient`` in the page.

The module must be built: the test runs ``npm ci && npm run build`` in clients/js when
``dist/index.js`` is missing (``make client`` does the same), and is skipped when Node or
npm is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import browser_page, chromium_or_skip
from tests.support.browser import page_server as serve_pages
from tests.support.owner_rows import NOTES_TABLE, headers, insert_note

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js"
DIST = CLIENT / "dist"
PASSWORD = "correct horse battery"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>client</title></head><body>
<script type="module">
import { createClient } from "/dist/index.js";
const GATEWAY = %(gateway)s, KEY = %(key)s, SERVER_KEY = %(server_key)s;
const em = createClient({ url: GATEWAY, apiKey: KEY });
window.events = [];
window.failures = [];
const check = (what, r) => { if (r.error) window.failures.push([what, r.error]); return r; };

window.serverKeyRefusal = () => {
  try { createClient({ url: GATEWAY, apiKey: SERVER_KEY }); return null; }
  catch (e) { return e.code; }
};
window.refused = async () => (await em.db.from("no_such_table").select().execute()).error;
window.insert = async (body) =>
  check("insert", await em.db.from("notes").insert({ body }).execute());
window.start = async (email, password) => {
  const up = check("signUp", await em.auth.signUp({ email, password }));
  await window.insert("before the stream");
  await new Promise((resolve) => {
    window.sub = em.realtime.subscribe("notes", {
      onStatus: (s) => { if (s === "open") resolve(); },
    }, (e) => window.events.push(e));
  });
  return { userId: up.data.user.id, stored: localStorage.getItem("easymode.session") };
};
window.finish = async () => {
  const session = (await em.auth.session()).token;
  window.sub.close();
  const out = check("signOut", await em.auth.signOut());
  const stored = localStorage.getItem("easymode.session");
  return { session, after: await em.auth.session(), stored, status: out.status };
};
window.ready = true;
</script></body></html>
"""


def _built_module() -> Path:
    if not (DIST / "index.js").exists():
        if shutil.which("node") is None or shutil.which("npm") is None:
            pytest.skip("node and npm are needed to build clients/js (apt-get install nodejs npm)")
        for command in (["npm", "ci", "--no-audit", "--no-fund"], ["npm", "run", "build"]):
            done = subprocess.run(command, cwd=CLIENT, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
    return DIST


@pytest.fixture
def page_server() -> Iterator[tuple[str, dict[str, bytes | tuple[bytes, str]]]]:
    """The page and the built module (``/dist/*.js``) on another origin."""
    with serve_pages() as (origin, content):
        for file in _built_module().glob("*.js"):
            content[f"/dist/{file.name}"] = (file.read_bytes(), "text/javascript")
        yield origin, content


def test_the_client_in_a_browser_from_another_origin(
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
    bob = {"email": f"bob-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD}
    r = httpx.post(gateway + "/v1/inhouse/auth/sign-up", headers={"x-api-key": key}, json=bob)
    assert r.status_code == 200, r.text
    bob_token = r.json()["data"]["session"]["token"]
    content["/"] = (
        PAGE
        % {
            "gateway": json.dumps(gateway),
            "key": json.dumps(key),
            "server_key": json.dumps(project["server_key"]),
        }
    ).encode()

    def bob_writes(body: str) -> None:
        insert_note(gateway, key, bob_token, body)

    with browser_page(sync_playwright) as (page, urls):
        page.goto(origin + "/")
        page.wait_for_function("window.ready === true", timeout=20_000)
        refusal = page.evaluate("window.serverKeyRefusal()")
        refused = page.evaluate("window.refused()")
        started = page.evaluate(
            "([e, p]) => window.start(e, p)",
            [f"alice-{uuid.uuid4().hex[:8]}@example.com", PASSWORD],
        )
        bob_writes("bob while alice streams")
        page.evaluate("window.insert('alice while streaming')")
        bob_writes("bob again")
        page.evaluate("window.insert('done')")
        page.wait_for_function(
            "window.events.some(e => e.row && e.row.body === 'done')", timeout=20_000
        )
        events = page.evaluate("window.events")
        finished = page.evaluate("window.finish()")
        failures = page.evaluate("window.failures")

    assert refusal == "SERVER_KEY_IN_BROWSER"
    # errors keep the gateway's code and X-Request-Id across origins (an exposed header)
    assert refused["code"] == "TABLE_NOT_FOUND" and refused["status"] == 404
    assert refused["requestId"]
    assert failures == []
    assert [(e["type"], e["row"]["body"]) for e in events] == [
        ("insert", "alice while streaming"),
        ("insert", "done"),
    ]
    assert all(e["row"]["user_id"] == started["userId"] for e in events)
    # the session was kept in localStorage, and sign-out removed it
    assert started["stored"] and json.loads(started["stored"])["token"] == finished["session"]
    assert finished["after"] is None and finished["stored"] is None
    assert finished["status"] == 200
    # the module came from the page's origin, the API from another
    assert any(u.startswith(origin + "/dist/") for u in urls)
    assert origin.rsplit(":", 1)[1] != gateway.rsplit(":", 1)[1]
    # EventSource with a ticket; the session never in a URL
    assert any("/realtime?" in u and "ticket=" in u for u in urls)
    assert not [u for u in urls if finished["session"] in u]
    signed_out = httpx.get(
        gateway + "/v1/inhouse/auth/user", headers=headers(key, finished["session"])
    )
    assert signed_out.status_code == 401
