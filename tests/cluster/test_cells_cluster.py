"""Cells across real gateway processes: three databases (home, ``a``, ``b``), three instances.

Every instance serves every project by routing its key to its cell: data, auth, realtime
and jobs of projects on different cells, exact rate limits per project across the
instances, and a key created after its project's first request routed at once (NOTIFY).
The rows are checked in the cell's database itself, and absent from the others.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from gateway.auth.keys import hash_key
from gateway.cells import directory
from gateway.control.keys import create_key
from gateway.control.projects import connect
from tests.support.admin_client import SECRET, AdminClient
from tests.support.admission import LONG_WINDOW_S, counter_row, fresh_window
from tests.support.cells import make_cell_project, register_cell, remove_cell, unique_cell_name
from tests.support.harness import ClusterStarter, GatewayCluster
from tests.support.jobs_receiver import JOBS, Receiver, set_endpoint
from tests.support.polling import eventually, wait_until_async
from tests.support.sse import REALTIME_ENV, Stream

BASE = "/v1/inhouse/db"
ENV = {
    **REALTIME_ENV,
    "GATEWAY_ADMIN_HMAC_SECRET": SECRET,
    "GATEWAY_RATE_LIMIT_WINDOW_S": str(LONG_WINDOW_S),
    "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true",
    "GATEWAY_JOBS_POLL_S": "0.2",
}


@pytest.fixture(scope="module")
def cells(pg_url: str, cell_databases: Any) -> Iterator[dict[str, str]]:
    """Two cells besides home, registered in the control database: name -> URL."""
    urls = cell_databases(2)
    named = {unique_cell_name("a"): urls[0], unique_cell_name("b"): urls[1]}
    for name, url in named.items():
        register_cell(pg_url, name, url)
    try:
        yield named
    finally:
        for name in named:
            remove_cell(pg_url, name)


@pytest.fixture(scope="module")
def cluster(cells: dict[str, str], module_cluster: ClusterStarter) -> GatewayCluster:
    return module_cluster(3, env=ENV, name="cells")


def _placed(pg_url: str, cells: dict[str, str], make_project: Any, **kw: Any) -> list[dict]:
    """One project on home and one on each cell."""
    home = {**make_project(**kw), "cell": "home", "url": pg_url}
    others = [
        {**make_cell_project(pg_url, name, url, **kw), "url": url} for name, url in cells.items()
    ]
    return [home, *others]


def _query(url: str, key: str, query: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        url + BASE + "/query",
        json={"query": query},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_projects_on_three_cells_serve_data_from_every_instance(
    pg_url: str, cells: dict[str, str], cluster: GatewayCluster, make_project: Any
) -> None:
    projects = _placed(pg_url, cells, make_project)
    for project in projects:
        for i, url in enumerate(cluster.urls):
            title = f"{project['cell']}-{i}"
            r = _query(
                url,
                project["server_key"],
                {
                    "operation": "insert",
                    "table": "todos",
                    "data": {"title": title},
                    "returning": ["id", "title"],
                },
            )
            assert r.status_code == 200, r.text
            assert r.headers["X-Project-Id"] == project["id"]
        r = _query(
            cluster.urls[2],
            project["public_key"],
            {
                "operation": "select",
                "table": "todos",
                "columns": ["title"],
            },
        )
        assert r.status_code == 200, r.text
        assert sorted(row["title"] for row in r.json()["data"]) == sorted(
            f"{project['cell']}-{i}" for i in range(3)
        )
        schema = httpx.get(
            cluster.urls[1] + BASE + "/schema",
            headers={"Authorization": f"Bearer {project['public_key']}"},
        )
        assert schema.status_code == 200 and "todos" in schema.text
    # the bytes sent are counted in each project's own cell (bandwidth quota)
    for project in projects:

        def sent(p: dict[str, Any] = project) -> int:
            with psycopg.connect(p["url"]) as conn:
                row = conn.execute(
                    "SELECT bandwidth_bytes FROM gateway.quota_usage WHERE project_id = %s",
                    [p["id"]],
                ).fetchone()
            return int(row[0]) if row else 0

        assert eventually(lambda s=sent: s() > 0, timeout=10), project["cell"]
    # the rows live in their project's cell only
    for project in projects:
        for other in projects:
            with psycopg.connect(other["url"]) as conn:
                found = conn.execute(
                    "SELECT count(*) FROM gateway.projects WHERE id = %s", [project["id"]]
                ).fetchone()
            assert found == ((1,) if other["url"] == project["url"] else (0,))


def test_rate_limits_stay_exact_per_project_across_instances_and_cells(
    pg_url: str, cells: dict[str, str], cluster: GatewayCluster, make_project: Any, db: Any
) -> None:
    projects = _placed(pg_url, cells, make_project, rate_limit_per_minute=20)
    fresh_window(db, LONG_WINDOW_S, 30)

    async def fire(key: str, n: int) -> Counter[int]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(i: int) -> int:
                r = await client.post(
                    cluster.urls[i % 3] + BASE + "/query",
                    json={"query": {"operation": "select", "table": "todos", "limit": 1}},
                    headers={"Authorization": f"Bearer {key}"},
                )
                return r.status_code

            return Counter(await asyncio.gather(*(one(i) for i in range(n))))

    async def main() -> list[Counter[int]]:
        return await asyncio.gather(*(fire(p["public_key"], 60) for p in projects))

    for project, counts in zip(projects, asyncio.run(main()), strict=True):
        assert counts[200] == 20, (project["cell"], counts)
        assert set(counts) <= {200, 429, 503}, counts
        with psycopg.connect(project["url"], row_factory=psycopg.rows.dict_row) as conn:
            row = counter_row(conn, project["id"])
        assert row is not None and row["window_count"] == 20


def test_auth_sign_up_and_sign_in_on_a_cell(
    pg_url: str, cells: dict[str, str], cluster: GatewayCluster
) -> None:
    name, url = next(iter(cells.items()))
    project = make_cell_project(pg_url, name, url)
    email = f"u-{uuid.uuid4().hex[:8]}@example.com"
    auth = "/v1/inhouse/auth"
    headers = {"x-api-key": project["public_key"]}
    up = httpx.post(
        cluster.urls[0] + auth + "/sign-up",
        json={"email": email, "password": "hunter22!"},
        headers=headers,
    )
    assert up.status_code == 200, up.text
    signed_in = httpx.post(
        cluster.urls[1] + auth + "/sign-in",
        json={"email": email, "password": "hunter22!"},
        headers=headers,
    )
    assert signed_in.status_code == 200, signed_in.text
    token = signed_in.json()["data"]["session"]["token"]
    me = httpx.get(
        cluster.urls[2] + auth + "/user",
        headers={**headers, "Authorization": f"Bearer {token}"},
    )
    assert me.status_code == 200, me.text
    with psycopg.connect(url) as conn:
        users = conn.execute(
            "SELECT count(*) FROM gateway.auth_users WHERE project_id = %s", [project["id"]]
        ).fetchone()
    assert users == (1,)


def test_realtime_on_a_cell_with_a_ticket_and_with_a_key(
    pg_url: str, cells: dict[str, str], cluster: GatewayCluster
) -> None:
    name, url = list(cells.items())[1]
    project = make_cell_project(pg_url, name, url)
    key = project["public_key"]

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                cluster.urls[0] + BASE + "/realtime/ticket",
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 200, r.text
            ticket = r.json()["data"]["ticket"]
            assert ticket.startswith(name + ".")
            by_ticket = Stream(cluster.urls[1], ticket=ticket)
            by_key = Stream(cluster.urls[2], key=key)
            assert await by_ticket.wait_open() == 200, by_ticket.body
            assert await by_key.wait_open() == 200, by_key.body
            insert = await client.post(
                cluster.urls[0] + BASE + "/query",
                json={"query": {"operation": "insert", "table": "todos", "data": {"title": "rt"}}},
                headers={"Authorization": f"Bearer {project['server_key']}"},
            )
            assert insert.status_code == 200, insert.text
            for stream in (by_ticket, by_key):
                await wait_until_async(
                    lambda s=stream: any(
                        e.event == "insert" and e.data["row"]["title"] == "rt" for e in s.events
                    ),
                    timeout=15,
                    message="the change reached the stream",
                )
                await stream.close()
            # a ticket for an unknown cell is an invalid ticket, not a 503
            bogus = Stream(cluster.urls[0], ticket="nosuchcell.abc")
            assert await bogus.wait_open() == 401
            assert bogus.error_body()["code"] == "TICKET_INVALID"

    asyncio.run(main())


def test_jobs_on_a_cell_are_delivered_by_that_cells_workers(
    pg_url: str, cells: dict[str, str], cluster: GatewayCluster, receiver: Receiver
) -> None:
    name, url = next(iter(cells.items()))
    project = make_cell_project(pg_url, name, url)
    receiver.secrets.append(set_endpoint(url, project["name"], receiver.url()))
    with httpx.Client(
        base_url=cluster.urls[2], headers={"x-api-key": project["server_key"]}, timeout=10
    ) as c:
        r = c.post(JOBS, json={"name": "cells.job", "payload": {"n": 1}})
        assert r.status_code == 201, r.text
        job_id = r.json()["data"]["job"]["id"]
        assert eventually(
            lambda: c.get(f"{JOBS}/{job_id}").json()["data"]["job"]["status"] == "completed",
            timeout=20,
        )
    [delivery] = receiver.for_job(job_id)
    assert delivery.signature_ok and delivery.payload == {"n": 1}


def test_a_key_created_after_the_first_request_routes_at_once(
    pg_url: str, cells: dict[str, str], cluster: GatewayCluster
) -> None:
    name, url = next(iter(cells.items()))
    project = make_cell_project(pg_url, name, url)
    select = {"operation": "select", "table": "todos", "limit": 1}
    for instance in cluster.urls:
        assert _query(instance, project["public_key"], select).status_code == 200
    with connect(url) as conn:
        new = create_key(conn, project["id"], key_type="public")
    # the unknown key was just looked up (home answered it: not found) on every instance
    for instance in cluster.urls:
        assert _query(instance, new["key"], select).status_code == 401
    with connect(pg_url) as control:
        directory.register_key(control, project["id"], hash_key(new["key"]))
        control.commit()
    assert eventually(
        lambda: all(_query(u, new["key"], select).status_code == 200 for u in cluster.urls),
        timeout=5,
    )


def test_the_admin_api_places_projects_and_serves_them_on_their_cell(
    cells: dict[str, str], cluster: GatewayCluster
) -> None:
    name, url = list(cells.items())[1]
    admin = AdminClient(cluster.urls[0])
    try:
        listed = admin.ok("GET", "/cells")["cells"]
        assert {c["name"] for c in listed} >= {"home", *cells}
        project = admin.ok(
            "POST", "/projects", {"name": f"adm-{uuid.uuid4().hex[:8]}", "cell": name}
        )
        assert project["cell"] == name
        assert admin.ok("GET", f"/projects/{project['name']}")["cell"] == name
        # the list pages over every cell's projects, each naming its cell
        listed_all, offset = [], 0
        while True:
            page = admin.ok("GET", f"/projects?limit=100&offset={offset}")
            listed_all += page["projects"]
            offset += len(page["projects"])
            if not page["hasMore"]:
                break
        assert len(listed_all) == page["total"]
        mine = [p for p in listed_all if p["id"] == project["id"]]
        assert [p["cell"] for p in mine] == [name]
        order = [c["name"] for c in listed]  # home first, then by name
        positions = [order.index(p["cell"]) for p in listed_all]
        assert positions == sorted(positions)
        admin.ok(
            "POST",
            f"/projects/{project['id']}/tables",
            {
                "name": "todos",
                "client_read": True,
                "client_write": True,
                "columns": [
                    {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
                    {"name": "title", "type": "text"},
                ],
            },
        )
        key = admin.ok("POST", f"/projects/{project['id']}/keys", {"type": "server"})
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "SELECT count(*) FROM gateway.api_keys WHERE project_id = %s", [project["id"]]
            ).fetchone() == (1,)
        # the new key is routed by every instance
        insert = {"operation": "insert", "table": "todos", "data": {"title": "via admin"}}
        for instance in cluster.urls:
            assert _query(instance, key["key"], insert).status_code == 200
        # a name is unique across cells; an unknown cell is a 404
        taken = admin.call("POST", "/projects", {"name": project["name"]})
        assert taken.status_code == 409, taken.text
        unknown = admin.call(
            "POST", "/projects", {"name": "x-" + uuid.uuid4().hex[:8], "cell": "nope"}
        )
        assert unknown.status_code == 404, unknown.text
        admin.ok("DELETE", f"/projects/{project['id']}", {"confirm": project["name"]})
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "SELECT count(*) FROM gateway.projects WHERE id = %s", [project["id"]]
            ).fetchone() == (0,)
        gone = admin.call("GET", f"/projects/{project['id']}")
        assert gone.status_code == 404
    finally:
        admin.close()
