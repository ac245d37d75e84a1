"""A fuzzer over every route: hypothesis draws whole HTTP requests from each route's
schema and from mutations of it (tests/support/fuzz_routes.py, fuzz_values.py) and sends
them to two real ``gateway serve`` processes on the session's PostgreSQL.

The property: every answer is below 500, or a 503 with ``Retry-After`` — the documented
answer to overload and outages (gateway.errors.service_unavailable), which a 2-core
machine running other suites can really produce and which a client is told to retry; it
is a refusal, not a crash. Anything else 5xx, a closed connection or a protocol error
fails the test and prints the request.

``make test`` runs a fixed number of examples per group with a fixed seed
(``derandomize``); ``FUZZ_EXAMPLES=5000`` runs that many per group instead (see
docs/testing.md). The 500s of issue 21 that the fuzzer reproduces are pinned in
``test_issue21_inputs``, one request each, with the 400 code each must answer.
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.control import tabledef
from gateway.control.keys import create_key
from gateway.control.projects import connect, create_project
from gateway.control.tables import create_table
from tests.support.admin_client import SECRET, AdminClient
from tests.support.fuzz_routes import (
    JOBS,
    FuzzRequest,
    Targets,
    admin_requests,
    auth_requests,
    data_requests,
    jobs_requests,
    send,
)
from tests.support.harness import ClusterStarter, GatewayCluster
from tests.support.jobs_receiver import Receiver, set_endpoint
from tests.support.owner_rows import NOTES_TABLE, make_session
from tests.support.sse import REALTIME_ENV
from tests.support.tables import TODOS_TABLE

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
ENV = {
    **REALTIME_ENV,
    "GATEWAY_ADMIN_HMAC_SECRET": SECRET,
    "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true",
    "GATEWAY_AUTH_MAGIC_LINK_RETURN_TOKEN": "true",
    # throttles that never refuse (their statements still run): with the defaults (5
    # sign-ups per IP) nearly every auth example would stop at a 429
    **{
        f"GATEWAY_AUTH_{name}_LIMIT": "1000000"
        for name in ("SIGN_UP", "SIGN_IN", "MAGIC_LINK", "VERIFY")
    },
}
PASSWORD = "correct horse battery"
UUID_SHAPE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# the demo todos with a column of each other type the contract maps (the example catalog's
# todos, tests/support/example_catalog.py), so shaped queries reach PostgreSQL with them
TYPED_TODOS: dict[str, Any] = {
    **TODOS_TABLE,
    "columns": [
        *TODOS_TABLE["columns"],
        {"name": "ext_id", "type": "uuid"},
        {"name": "price", "type": "numeric"},
        {"name": "due", "type": "date"},
        {"name": "priority", "type": "integer"},
        {"name": "rank", "type": "smallint"},
        {"name": "ratio", "type": "double precision"},
        {"name": "scores", "type": "integer[]"},
    ],
}


@pytest.fixture(scope="module")
def cluster(module_cluster: ClusterStarter) -> GatewayCluster:
    return module_cluster(2, env=ENV, name="fuzz")


def _project(pg_url: str, name: str) -> dict[str, Any]:
    """A project with the typed ``todos`` table, the owner table ``notes`` (realtime on
    both) and a public and a server key."""
    with connect(pg_url) as conn:
        project = create_project(conn, name, rate_limit_per_minute=10**6, requests_per_day=10**8)
        for table in (TYPED_TODOS, NOTES_TABLE):
            create_table(conn, project.id, tabledef.parse_table(table))
        public = create_key(conn, project.id, key_type="public")
        server = create_key(conn, project.id, key_type="server")
    return {"id": project.id, "name": name, "public": public["key"], "server": server["key"]}


def new_schedule(url: str, server_key: str) -> str:
    answer = httpx.post(
        url + "/v1/inhouse/jobs/schedules",
        json={"name": f"fuzz.{uuid.uuid4().hex[:8]}", "cron": "0 3 * * *"},
        headers={"x-api-key": server_key},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["data"]["schedule"]["id"])


@pytest.fixture(scope="module")
def targets(cluster: GatewayCluster, pg_url: str, receiver: Receiver) -> Targets:
    """Everything a request needs to get past the door: keys, a user with a session (and
    a password, so sign-in reaches the hash), a job, a schedule, a project for the admin
    routes to work on, and the admin API's OpenAPI document."""
    suffix = uuid.uuid4().hex[:8]
    project = _project(pg_url, f"fuzz-{suffix}")
    receiver.secrets.append(set_endpoint(pg_url, project["name"], receiver.url()))
    url = cluster.urls[0]
    signed_up = httpx.post(
        url + "/v1/inhouse/auth/sign-up",
        json={"email": "fuzz@example.com", "password": PASSWORD},
        headers={"x-api-key": project["public"]},
        timeout=30,
    )
    assert signed_up.status_code in (200, 201), signed_up.text
    user_id = signed_up.json()["data"]["user"]["id"]
    jobs = {"x-api-key": project["server"]}
    job = httpx.post(
        url + "/v1/inhouse/jobs", json={"name": "fuzz.job", "payload": {}}, headers=jobs
    )
    assert job.status_code == 201, job.text
    admin = AdminClient(url)
    try:
        admin_project = f"fuzz-admin-{suffix}"
        admin.ok("POST", "/projects", {"name": admin_project})
        admin.ok("POST", f"/projects/{admin_project}/tables", TODOS_TABLE)
        key = admin.ok("POST", f"/projects/{admin_project}/keys", {"type": "server"})
        openapi = admin.call("GET", "/openapi.json").json()
    finally:
        admin.close()
    return Targets(
        urls=cluster.urls,
        project_id=project["id"],
        public_key=project["public"],
        server_key=project["server"],
        session=make_session(pg_url, project["id"], user_id),
        auth_session=make_session(pg_url, project["id"], user_id),
        user_id=user_id,
        job_id=job.json()["data"]["job"]["id"],
        schedule_id=new_schedule(url, project["server"]),
        doomed_schedule_id=new_schedule(url, project["server"]),
        admin_secret=SECRET,
        admin_project=admin_project,
        admin_key_id=key.get("id") or key["key"]["id"],
        openapi=openapi.get("data", openapi),
    )


@pytest.fixture
def fresh(targets: Targets, pg_url: str) -> Targets:
    """``targets`` with a new session and schedule: the fuzz tests may have signed the
    module's out or deleted its schedule by the time a plain test runs."""
    user_id = targets.user_id
    return dataclasses.replace(
        targets,
        session=make_session(pg_url, targets.project_id, user_id),
        schedule_id=new_schedule(targets.urls[0], targets.server_key),
    )


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """No keep-alive: each request on its own connection, so a connection the gateway
    closes is charged to the request that caused it."""
    with httpx.Client(timeout=30.0, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        yield c


def acceptable(response: httpx.Response) -> bool:
    """Below 500, or the documented overload answer (503 with Retry-After)."""
    if response.status_code < 500:
        return True
    return response.status_code == 503 and "retry-after" in response.headers


def check(http: httpx.Client, base_url: str, request: FuzzRequest) -> httpx.Response:
    try:
        response = send(http, base_url, request)
    except httpx.TransportError as error:  # closed connection, protocol error, timeout
        pytest.fail(f"{type(error).__name__}: {error}\n{request!r}")
    assert acceptable(response), f"{response.status_code} {response.text[:500]!r}\nfor\n{request!r}"
    return response


def route_label(path: str) -> str:
    """The path with ids and junk segments folded, so the statistics group by route."""
    segments = [
        "{id}" if UUID_SHAPE.fullmatch(s) else "{junk}" if "%" in s or len(s) > 30 else s
        for s in path.split("/")
    ]
    return "/".join(segments)


GROUPS: dict[str, Callable[[Targets], st.SearchStrategy[FuzzRequest]]] = {
    "data": data_requests,  # /v1/inhouse/db/*, wrong methods, paths that are no route
    "auth": auth_requests,  # /v1/inhouse/auth/*
    "jobs": jobs_requests,  # /v1/inhouse/jobs*, schedules
    "admin": admin_requests,  # /v1/admin/*, from its OpenAPI document
}


@pytest.mark.parametrize("group", sorted(GROUPS))
@FUZZ
@given(data=st.data())
def test_routes(http: httpx.Client, targets: Targets, group: str, data: st.DataObject) -> None:
    request = data.draw(GROUPS[group](targets), label="request")
    base_url = data.draw(st.sampled_from(targets.urls), label="instance")
    response = check(http, base_url, request)
    # `--hypothesis-show-statistics` shows how many got past the door (not all 401s)
    event(f"{request.method} {route_label(request.path)}: {response.status_code}")


# --- what the fuzzer found ---------------------------------------------------------------


def _signed(targets: Targets, method: str, path: str, body: bytes = b"") -> FuzzRequest:
    headers = {"content-type": "application/json"}
    return FuzzRequest(method, path, "", headers, body, sign_with=targets.admin_secret)


# What the fuzzer found, fixed: (what, the request, the status it must get).
FIXED: dict[str, tuple[Callable[[Targets], FuzzRequest], int]] = {
    # gateway.control.projects.find_project sent the NUL to PostgreSQL (DataError → 500)
    "admin: %00 as the project of a job retry": (
        lambda t: _signed(t, "POST", f"/v1/admin/projects/%00/jobs/{t.job_id}/retry"),
        404,
    ),
    # gateway.jobs.rules._int_param: "²".isdigit() is True, int("²") raises ValueError
    "jobs: a superscript digit as the list's limit": (
        lambda t: FuzzRequest("GET", JOBS, "limit=%C2%B2", {"x-api-key": t.server_key}),
        400,
    ),
    "jobs: an Arabic-Indic digit as the list's offset": (
        lambda t: FuzzRequest("GET", JOBS, "offset=%D9%A3", {"x-api-key": t.server_key}),
        400,
    ),
    "admin: %00 as the project to delete": (
        lambda t: _signed(t, "DELETE", "/v1/admin/projects/a%00", b'{"confirm": "a"}'),
        404,
    ),
}


@pytest.mark.parametrize("finding", sorted(FIXED))
def test_fixed_findings(http: httpx.Client, fresh: Targets, finding: str) -> None:
    make, status = FIXED[finding]
    request = make(fresh)
    response = send(http, fresh.urls[0], request)
    assert response.status_code == status, (response.status_code, response.text, request)


def _jobs(targets: Targets, method: str, path: str, body: Any) -> FuzzRequest:
    headers = {"x-api-key": targets.server_key, "content-type": "application/json"}
    return FuzzRequest(method, JOBS + path, "", headers, orjson.dumps(body))


# The 500s of issue 21, one reproducing request each, and the code each now answers.
ISSUE21: dict[str, tuple[str, Callable[[Targets], FuzzRequest]]] = {
    "NUL in payload": (
        "INVALID_PAYLOAD",
        lambda t: _jobs(t, "POST", "", {"name": "a", "payload": {"k": "\x00"}}),
    ),
    "NUL in a payload key": (
        "INVALID_PAYLOAD",
        lambda t: _jobs(t, "POST", "", {"name": "a", "payload": {"\x00": 1}}),
    ),
    "NUL in concurrencyKey": (
        "VALIDATION_ERROR",
        lambda t: _jobs(t, "POST", "", {"name": "a", "payload": {}, "concurrencyKey": "a\x00"}),
    ),
    "NUL in idempotencyKey": (
        "VALIDATION_ERROR",
        lambda t: _jobs(t, "POST", "", {"name": "a", "payload": {}, "idempotencyKey": "a\x00"}),
    ),
    "NUL in a schedule's description": (
        "VALIDATION_ERROR",
        lambda t: _jobs(
            t, "PATCH", f"/schedules/{t.schedule_id}", {"description": "\x00a@example.com"}
        ),
    ),
    "runAt before year 1 in UTC": (
        "INVALID_DELAY",
        lambda t: _jobs(
            t, "POST", "", {"name": "a", "payload": {}, "runAt": "0001-01-01T00:00:00+01:00"}
        ),
    ),
    "cron on Feb 30": (
        "INVALID_CRON",
        lambda t: _jobs(t, "POST", "/schedules", {"name": "a", "cron": "0 0 30 2 *"}),
    ),
    "cron on Apr 31 with seconds": (
        "INVALID_CRON",
        lambda t: _jobs(t, "POST", "/schedules", {"name": "a", "cron": "0 0 0 31 4 *"}),
    ),
}


@pytest.mark.parametrize("case", sorted(ISSUE21))
def test_issue21_inputs(http: httpx.Client, fresh: Targets, case: str) -> None:
    """Each was a 500 on main before issue 21; now a 400 with the contract's code."""
    code, make = ISSUE21[case]
    response = send(http, fresh.urls[0], make(fresh))
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.json()["error"]["code"] == code, response.text
