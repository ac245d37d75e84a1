"""The early local deny (issue 16, part 3), in-process against a real PostgreSQL.

The early local deny (``gateway/http/front.py``) answers exactly as the pipeline's local
deny did: status, body, headers (CORS included), the request-log row, metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from tests.support.admission import LONG_WINDOW_S, fresh_window
from tests.support.observability import parse_samples, rows_for
from tests.support.polling import wait_until

QUERY = "/v1/inhouse/db/query"
BATCH = "/v1/inhouse/db/batch"
SCHEMA = "/v1/inhouse/db/schema"
WINDOW_S = LONG_WINDOW_S  # room left in the window without waiting for the next one


# --- the early local deny ----------------------------------------------------------------


def _volatile(name: str) -> bool:
    return name in ("x-request-id", "x-gateway-duration-ms")


def test_early_local_deny_answers_exactly_as_the_pipeline(
    pg_url: str, db: psycopg.Connection[Any], make_project: Callable[..., dict[str, Any]]
) -> None:
    from starlette.testclient import TestClient

    from gateway.http.app import create_app
    from gateway.settings import Settings

    settings = Settings.from_env(
        {
            "DATABASE_URL": pg_url,
            "GATEWAY_INSTANCE_ID": "early-deny",
            "GATEWAY_LOG_FLUSH_MS": "50",
            "GATEWAY_RATE_LIMIT_WINDOW_S": str(WINDOW_S),
            "GATEWAY_MAINTENANCE_INTERVAL_S": "3600",
        }
    )
    project = make_project(rate_limit_per_minute=1)
    key = project["server_key"]
    body = {"query": {"operation": "select", "table": "todos", "limit": 1}}
    headers = {
        "Authorization": f"Bearer {key}",
        "User-Agent": "early-deny-test",
        "Origin": "https://app.example",
    }
    app = create_app(settings)
    fresh_window(db, WINDOW_S, 25)
    with TestClient(app) as client:
        state = app.state.gw
        # local denies last until the reset only once the listener is connected
        wait_until(lambda: state.listener.connected, timeout=10, message="listener connected")
        assert client.post(QUERY, json=body, headers=headers).status_code == 200
        from_db = client.post(QUERY, json=body, headers=headers)  # the database says 429
        assert from_db.status_code == 429
        front = app.middleware_stack
        assert front.counts["early_local_deny"] == 0
        assert state.admitter.stats()["local_deny_entries"] == 1

        attempt = 0
        for attempt in range(3):  # noqa: B007 - counted below
            early = client.post(QUERY, json=body, headers=headers)
            # the same request through the pipeline (its own local deny, as before)
            old = client.portal.call(state.pipeline.query, key, json.dumps(body).encode())
            if early.content == old.body:
                break  # else the Retry-After second turned in between: once more
        assert front.counts["early_local_deny"] == attempt + 1
        assert early.status_code == old.status == 429
        assert early.content == old.body
        assert early.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        got = {k.lower(): v for k, v in early.headers.items()}
        expected = {k.lower(): v for k, v in old.headers.items()}
        assert {k: got.get(k) for k in expected} == expected
        # CORS, as the middleware adds it to the pipeline's answers (the DB-decided 429)
        cors = {k: v for k, v in from_db.headers.items() if k.startswith("access-control-")}
        assert cors and {k: got.get(k) for k in cors} == cors
        # nothing else than what the routes add: request id, duration, length and type
        assert set(got) == set(from_db.headers.keys()), set(got) ^ set(from_db.headers.keys())
        assert got["content-type"] == "application/json"
        assert len(got["x-request-id"]) == 32 and float(got["x-gateway-duration-ms"]) >= 0

        # batch and schema are answered early too (their own log rows)
        batch = client.post(BATCH, json={"queries": [body["query"]]}, headers=headers)
        schema = client.get(SCHEMA, headers=headers)
        assert (batch.status_code, schema.status_code) == (429, 429)
        assert front.counts["early_local_deny"] == attempt + 3
        # an unknown key is not the front's business: the pipeline answers 401
        other = {"Authorization": "Bearer sheen_sk_unknown"}
        assert client.post(QUERY, json=body, headers=other).status_code == 401
        # a wrong method still gets the router's answer, not a 429
        assert client.get(QUERY, headers=headers).status_code == 405
        metrics = client.get("/metrics").text

    rows = rows_for(pg_url, "early-deny")
    refused = [r for r in rows if r["status_code"] == 429]
    assert len(refused) == attempt + 4  # the DB's 429, the early ones, batch, schema
    by_request = {r["request_id"]: r for r in rows}
    db_row, early_row = by_request[from_db.headers["x-request-id"]], by_request[got["x-request-id"]]
    for row in (db_row, early_row):
        assert (row["method"], row["path"], row["status_code"]) == ("QUERY", "/db/query", 429)
        assert row["error_code"] == "RATE_LIMIT_EXCEEDED"
        assert (str(row["project_id"]), str(row["api_key_id"])) == (
            project["id"],
            project["server_key_id"],
        )
        assert row["table_name"] is None and row["row_count"] is None
        assert row["user_agent"] == "early-deny-test"
        assert row["instance_id"] == "early-deny"
    assert early_row["response_size_bytes"] == len(early.content)
    assert db_row["client_ip"] == early_row["client_ip"]
    assert by_request[batch.headers["x-request-id"]]["method"] == "BATCH"
    assert by_request[batch.headers["x-request-id"]]["path"] == "/db/batch"
    assert by_request[schema.headers["x-request-id"]]["method"] == "SCHEMA"
    samples = parse_samples(metrics)
    # the pipeline call above counted too: every early deny plus it, and none lost
    assert samples['gateway_admission_decisions_total{outcome="local_deny"}'] >= attempt + 3
    assert samples[f'gateway_requests_total{{route="{QUERY}",status="429"}}'] == attempt + 2
    assert samples["gateway_overload_early_local_denies_total"] == attempt + 3


def test_early_local_deny_for_a_project_on_another_cell(
    pg_url: str, db: psycopg.Connection[Any], cell_databases: Any
) -> None:
    """The admitter is per cell: the front asks the cell whose admitter knows the key's
    project to be over its limit, and the answer is counted for that cell."""
    from starlette.testclient import TestClient

    from gateway.http.app import create_app
    from gateway.settings import Settings
    from tests.support.cells import (
        make_cell_project,
        register_cell,
        remove_cell,
        unique_cell_name,
    )

    (cell_url,) = cell_databases(1)
    cell = unique_cell_name("deny")
    register_cell(pg_url, cell, cell_url)
    try:
        project = make_cell_project(pg_url, cell, cell_url, rate_limit_per_minute=1)
        settings = Settings.from_env(
            {
                "DATABASE_URL": pg_url,
                "GATEWAY_INSTANCE_ID": "early-deny-cell",
                "GATEWAY_RATE_LIMIT_WINDOW_S": str(WINDOW_S),
                "GATEWAY_MAINTENANCE_INTERVAL_S": "3600",
            }
        )
        headers = {"Authorization": f"Bearer {project['server_key']}"}
        body = {"query": {"operation": "select", "table": "todos", "limit": 1}}
        app = create_app(settings)
        fresh_window(db, WINDOW_S, 25)
        with TestClient(app) as client:
            cells = app.state.gw.cells
            wait_until(lambda: cell in cells.runtimes, timeout=10, message="cell opened")
            runtime = cells.runtimes[cell]
            wait_until(
                lambda: runtime.listener is not None and runtime.listener.connected,
                timeout=10,
                message="the cell's listener connected",
            )
            assert client.post(QUERY, json=body, headers=headers).status_code == 200
            assert client.post(QUERY, json=body, headers=headers).status_code == 429
            front = app.middleware_stack
            assert front.counts["early_local_deny"] == 0
            assert runtime.admitter.stats()["local_deny_entries"] == 1
            assert app.state.gw.admitter.stats()["local_deny_entries"] == 0  # home's
            early = client.post(QUERY, json=body, headers=headers)
            assert early.status_code == 429
            assert early.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
            assert front.counts["early_local_deny"] == 1
            # a key of a project on home is not denied by the cell's entry
            other = {"Authorization": "Bearer sheen_sk_unknown"}
            assert client.post(QUERY, json=body, headers=other).status_code == 401
            assert front.counts["early_local_deny"] == 1
    finally:
        remove_cell(pg_url, cell)
