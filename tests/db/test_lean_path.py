"""The hot data routes' lean path (``gateway/http/lean.py``) answers exactly as the
generic middleware stack does, in-process against a real PostgreSQL.

Each request is sent twice through ASGI: once to the app's outermost layer (the HTTP
front, which serves the hot routes itself) and once to the middleware stack behind it
(``front.app``: ServerError → Observe → CORS → GZip → Exception → Router). Status,
headers (in order), body, the metrics' route label, the access-log line and the bandwidth
counted must match; only the request id, the duration and the rate limit's counts differ.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

BASE = "/v1/inhouse/db"
ALLOWED = "https://app.example"
VOLATILE_HEADERS = (b"x-request-id", b"x-gateway-duration-ms")
# the limit's remaining count moves by one per request: compared by name and place only
COUNTING_HEADERS = (b"x-ratelimit-remaining", b"x-ratelimit-reset", b"ratelimit")
VOLATILE_LOG_FIELDS = ("ts", "duration_ms", "request_id")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


def _scope(app: Any, method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
        "app": app,
    }


async def _call(
    app: Any, asgi: Any, method: str, path: str, headers: dict[str, str], body: bytes
) -> dict[str, Any]:
    """Status, headers without the volatile ones, body, and the exception (if any)."""
    messages: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if requested:
            return {"type": "http.disconnect"}
        requested = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    raised = None
    try:
        await asgi(_scope(app, method, path, headers), receive, send)
    except Exception as exc:  # the server's own log sees it: compared, not hidden
        raised = type(exc).__name__
    start = next(m for m in messages if m["type"] == "http.response.start")
    return {
        "status": start["status"],
        "headers": [
            (k, b"*" if k in COUNTING_HEADERS else v)
            for k, v in start["headers"]
            if k not in VOLATILE_HEADERS
        ],
        "volatile": sorted(k for k, _ in start["headers"] if k in VOLATILE_HEADERS),
        "body": b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"),
        "raised": raised,
    }


@pytest.fixture
def gateway(pg_url: str, make_project: Callable[..., dict[str, Any]]) -> Any:
    from starlette.testclient import TestClient

    from gateway.http.app import create_app
    from gateway.ops.observe import access_logger
    from gateway.settings import Settings

    settings = Settings.from_env(
        {
            "DATABASE_URL": pg_url,
            "GATEWAY_INSTANCE_ID": "lean-path",
            "GATEWAY_CORS_ORIGINS": ALLOWED,
            "GATEWAY_ACCESS_LOG": "json",
            "GATEWAY_MAINTENANCE_INTERVAL_S": "3600",
        }
    )
    project = make_project()
    app = create_app(settings)
    lines = Lines()
    access_logger.addHandler(lines)
    level = access_logger.level
    access_logger.setLevel(logging.INFO)
    try:
        with TestClient(app) as client:
            yield app, client, project, lines
    finally:
        access_logger.removeHandler(lines)
        access_logger.setLevel(level)


def test_hot_routes_answer_as_the_middleware_stack(gateway: Any) -> None:
    app, client, project, lines = gateway
    server = {"Authorization": f"Bearer {project['server_key']}"}
    rows = [{"title": f"row {i} " + "x" * 40} for i in range(60)]
    insert = {"query": {"operation": "insert", "table": "todos", "data": rows}}
    assert client.post(f"{BASE}/query", json=insert, headers=server).status_code == 200

    front = app.middleware_stack
    stack = front.app
    meter = app.state.gw.extras["bandwidth"]
    counted: list[tuple[str, int]] = []
    add = meter.add
    meter.add = lambda project_id, n: (counted.append((project_id, n)), add(project_id, n))

    public = {"Authorization": f"Bearer {project['public_key']}"}
    one = json.dumps({"query": {"operation": "select", "table": "todos", "limit": 1}}).encode()
    many = json.dumps({"query": {"operation": "select", "table": "todos", "limit": 60}}).encode()
    batch = json.dumps({"queries": [{"operation": "select", "table": "todos", "limit": 1}]})
    cases: list[tuple[str, str, dict[str, str], bytes]] = [
        ("POST", f"{BASE}/query", public, one),  # small: no gzip, Vary: Origin
        ("POST", f"{BASE}/query", {**public, "Origin": ALLOWED}, one),  # mirrored origin
        ("POST", f"{BASE}/query", {**public, "Origin": "https://evil.example"}, one),
        ("POST", f"{BASE}/query", {**public, "Accept-Encoding": "gzip"}, many),  # gzipped
        ("POST", f"{BASE}/query", {**public, "Origin": ALLOWED, "Accept-Encoding": "gzip"}, many),
        ("POST", f"{BASE}/query", public, many),  # large, identity: Vary: Accept-Encoding
        ("POST", f"{BASE}/query", public, b"{not json"),  # 400
        ("POST", f"{BASE}/query", {"Authorization": "Bearer nope"}, one),  # 401
        ("POST", f"{BASE}/query", {}, one),  # no key
        ("POST", f"{BASE}/batch", {**public, "Origin": ALLOWED}, batch.encode()),
        ("GET", f"{BASE}/schema", {**public, "Accept-Encoding": "gzip"}, b""),
        ("POST", f"{BASE}/realtime/ticket", {**public, "Origin": ALLOWED}, b"{}"),
    ]
    for method, path, headers, body in cases:
        before = len(lines.lines)
        lean = client.portal.call(_call, app, front, method, path, headers, body)
        counted_lean, counted[:] = list(counted), []
        full = client.portal.call(_call, app, stack, method, path, headers, body)
        if path.endswith("/ticket"):  # a new single-use ticket each time: its shape only
            lean_data, full_data = (json.loads(r.pop("body"))["data"] for r in (lean, full))
            assert lean_data.keys() == full_data.keys() and "ticket" in lean_data
        assert lean == full, (method, path, headers)
        assert lean["volatile"] == sorted(VOLATILE_HEADERS)
        assert counted_lean == counted, "bandwidth: the bytes sent, after gzip"
        counted[:] = []
        log_lean, log_full = (
            {k: v for k, v in line.items() if k not in VOLATILE_LOG_FIELDS}
            for line in lines.lines[before:]
        )
        assert log_lean == log_full
        assert log_lean["route"] == path
    gzipped = client.portal.call(
        _call, app, front, "POST", f"{BASE}/query", {**public, "Accept-Encoding": "gzip"}, many
    )
    assert (b"content-encoding", b"gzip") in gzipped["headers"]
    assert len(json.loads(gzip.decompress(gzipped["body"]))["data"]) == 60


def test_an_unexpected_error_is_a_500_without_a_traceback(
    gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, project, lines = gateway
    pipeline = app.state.gw.pipeline

    async def broken(*args: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(pipeline, "query", broken)
    headers = {"Authorization": f"Bearer {project['public_key']}", "Origin": ALLOWED}
    body = b'{"query": {"operation": "select", "table": "todos"}}'
    front = app.middleware_stack
    before = len(lines.lines)
    lean = client.portal.call(_call, app, front, "POST", f"{BASE}/query", headers, body)
    full = client.portal.call(_call, app, front.app, "POST", f"{BASE}/query", headers, body)
    assert lean == full
    assert lean["status"] == 500 and lean["raised"] == "RuntimeError"
    assert json.loads(lean["body"])["error"]["code"] == "INTERNAL_ERROR"
    assert b"secret" not in lean["body"] and b"Traceback" not in lean["body"]
    observed = [line["status"] for line in lines.lines[before:]]
    assert observed == [500, 500]


def test_a_ticket_hashes_its_key_and_its_session_once(
    gateway: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ticket route hashes the key and the session once each: the local deny, the
    admission and the ticket's row share the hashes (issue 23: hashed once per request)."""
    from tests.support.hashing import count_sha256
    from tests.support.owner_rows import make_session, make_user

    _, client, project, _ = gateway
    key = project["public_key"]
    session = make_session(pg_url, project["id"], make_user(pg_url, project["id"]))
    headers = {"x-api-key": key, "Authorization": f"Bearer {session}"}
    path = f"{BASE}/realtime/ticket"
    warm = client.post(path, json={}, headers=headers)
    assert warm.status_code == 200, warm.text
    hashed = count_sha256(monkeypatch)
    answer = client.post(path, json={}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert hashed.count(key.encode()) == 1
    assert hashed.count(session.encode()) == 1
