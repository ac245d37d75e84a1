"""Realtime on owner tables: streams carry only the subscriber's rows; single-use tickets.

Two real instances: a ticket asked on one opens a stream on the other, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import httpx
import psycopg

from tests.support.owner_rows import NOTES_TABLE, headers, make_session, make_user

BASE = "/v1/inhouse/db"
TIMEOUT_S = 20.0


class SSEReader:
    """Reads one stream's events in a task (``event`` name, parsed ``data``)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        params: dict[str, str],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.client, self.url, self.params, self.headers = client, url, params, headers
        self.events: list[tuple[str, Any]] = []
        self.status: int | None = None
        self.body = b""
        self.live = asyncio.Event()
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.client.stream(
            "GET", self.url, params=self.params, headers=self.headers
        ) as response:
            self.status = response.status_code
            if response.status_code != 200:
                self.body = await response.aread()
                self.live.set()
                return
            # the hub registered the subscription (at its cursor) before answering
            self.live.set()
            name, data = "message", ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif line == "":
                    if data or name != "message":
                        self.events.append((name, json.loads(data) if data else None))
                        self.changed.set()
                    name, data = "message", ""

    async def wait_for(self, predicate: Any) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not predicate(self.events):
                self.changed.clear()
                if self.task.done():
                    raise AssertionError(f"stream ended: {self.events}")
                await self.changed.wait()

    def rows(self) -> list[tuple[str, Any]]:
        return [(n, d["row"]) for n, d in self.events if n in ("insert", "update", "delete")]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def _insert(url: str, key: str, session: str | None, body: str, **extra: Any) -> dict[str, Any]:
    response = httpx.post(
        url + BASE + "/query",
        json={"query": {"operation": "insert", "table": "notes", "data": {"body": body, **extra}}},
        headers=headers(key, session),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json()["data"][0])


def test_owner_streams_and_tickets(pg_url: str, make_project: Any, gateway_cluster: Any) -> None:
    cluster = gateway_cluster(
        2, env={"GATEWAY_REALTIME_REVALIDATE_S": "0.3", "GATEWAY_REALTIME_HEARTBEAT_S": "0.3"}
    )
    project = make_project(table=NOTES_TABLE)
    pid, pk, sk = project["id"], project["public_key"], project["server_key"]
    alice, bob = make_user(pg_url, pid), make_user(pg_url, pid)
    alice_s, bob_s = make_session(pg_url, pid, alice), make_session(pg_url, pid, bob)
    first, second = cluster.urls

    def ticket(url: str, key: str, session: str | None) -> httpx.Response:
        return httpx.post(url + BASE + "/realtime/ticket", headers=headers(key, session))

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as client:
            stream_url = second + BASE + "/realtime"
            # a session token never goes in a URL
            for params in (
                {"table": "notes", "apikey": pk, "token": alice_s},
                {"table": "notes", "apikey": pk, "access_token": alice_s},
                {"table": "notes", "apikey": alice_s},
            ):
                r = await client.get(stream_url, params=params)
                assert r.status_code == 400, r.text
                assert r.json()["error"]["code"] == "SESSION_TOKEN_IN_URL"
            # a public key without a session can't stream an owner table
            r = await client.get(stream_url, params={"table": "notes", "apikey": pk})
            assert (r.status_code, r.json()["error"]["code"]) == (401, "SESSION_REQUIRED")

            # a ticket asked on the first instance opens a stream on the second
            answer = ticket(first, pk, alice_s)
            assert answer.status_code == 200, answer.text
            assert answer.headers["cache-control"] == "no-store"
            data = answer.json()["data"]
            assert data["expiresIn"] == 60 and data["ticket"] != alice_s
            alice_stream = SSEReader(
                client, stream_url, {"table": "notes", "ticket": data["ticket"]}
            )
            await asyncio.wait_for(alice_stream.live.wait(), TIMEOUT_S)
            assert alice_stream.status == 200, alice_stream.body
            # single use, on any instance
            for url in (first, second):
                r = await client.get(
                    url + BASE + "/realtime", params={"table": "notes", "ticket": data["ticket"]}
                )
                assert (r.status_code, r.json()["error"]["code"]) == (401, "TICKET_INVALID")
            # a server key's stream (headers) sees every row
            server_stream = SSEReader(
                client,
                first + BASE + "/realtime",
                {"table": "notes"},
                {"Authorization": f"Bearer {sk}"},
            )
            await asyncio.wait_for(server_stream.live.wait(), TIMEOUT_S)

            a1 = await asyncio.to_thread(_insert, first, pk, alice_s, "a1")
            b1 = await asyncio.to_thread(_insert, second, pk, bob_s, "b1")
            await asyncio.to_thread(_insert, first, sk, None, "for bob", user_id=bob)
            # the server hands a1 to bob: alice sees it go, bob's stream would see it come
            r = await asyncio.to_thread(
                httpx.post,
                first + BASE + "/query",
                json={"query": {"operation": "update", "table": "notes",
                                "set": {"user_id": bob},
                                "filters": [{"column": "id", "op": "eq", "value": a1["id"]}]}},
                headers=headers(sk),
            )  # fmt: skip
            assert r.status_code == 200, r.text
            last = await asyncio.to_thread(_insert, second, pk, alice_s, "a-last")
            await alice_stream.wait_for(
                lambda evs: any(n == "insert" and d["row"]["id"] == last["id"] for n, d in evs)
            )
            seen = alice_stream.rows()
            assert [(n, r.get("body")) for n, r in seen] == [
                ("insert", "a1"),
                ("delete", None),
                ("insert", "a-last"),
            ], seen
            assert all(r.get("user_id", alice) == alice for _, r in seen)
            assert b1["id"] not in [r["id"] for _, r in seen]
            await server_stream.wait_for(lambda evs: len([e for e in evs if e[0] == "insert"]) >= 4)

            # an ended session family (sign-out of a sibling token, reuse detection) ends
            # the stream at its next revalidation, though this token's own row is live
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE gateway.auth_session_families SET revoked_at = now()"
                    " WHERE user_id = %s",
                    [alice],
                )
            await alice_stream.wait_for(lambda evs: any(n == "error" for n, _ in evs))
            errors = [d for n, d in alice_stream.events if n == "error"]
            assert errors[0]["code"] == "SESSION_NOT_FOUND"
            # and no new ticket for a signed-out session
            r = ticket(first, pk, alice_s)
            assert (r.status_code, r.json()["error"]["code"]) == (401, "SESSION_NOT_FOUND")
            await alice_stream.close()
            await server_stream.close()

            # an expired ticket is refused (and gone)
            answer = ticket(first, pk, bob_s).json()["data"]
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE gateway.realtime_tickets SET expires_at = now() - interval '1 second'"
                    " WHERE project_id = %s",
                    [pid],
                )
                stored = conn.execute(
                    "SELECT count(*) FROM gateway.realtime_tickets WHERE ticket_hash = %s",
                    [answer["ticket"]],
                ).fetchone()
            assert stored == (0,)  # only its hash is stored
            r = await client.get(stream_url, params={"table": "notes", "ticket": answer["ticket"]})
            assert (r.status_code, r.json()["error"]["code"]) == (401, "TICKET_EXPIRED")
            r = await client.get(stream_url, params={"table": "notes", "ticket": "x" * 500})
            assert (r.status_code, r.json()["error"]["code"]) == (401, "TICKET_INVALID")
            # a ticket needs a key
            r = await client.post(first + BASE + "/realtime/ticket")
            assert (r.status_code, r.json()["error"]["code"]) == (401, "INVALID_API_KEY")

    asyncio.run(scenario())


def test_stream_ends_when_the_row_access_changes_under_it(
    pg_url: str, make_project: Any, gateway_cluster: Any
) -> None:
    """A stream opened while every row was visible must not keep carrying every row once
    the table becomes an owner table: it ends with an error event (the client reconnects
    under the new rule). Key and session as headers: the non-browser way."""
    from gateway.control.projects import connect
    from gateway.control.table_changes import set_row_access

    cluster = gateway_cluster(1)
    project = make_project(table={**NOTES_TABLE, "row_access": "all"})
    pid, pk, sk = project["id"], project["public_key"], project["server_key"]
    alice = make_user(pg_url, pid)
    session = make_session(pg_url, pid, alice)
    url = cluster.urls[0]

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as client:
            stream = SSEReader(client, url + BASE + "/realtime", {"table": "notes"},
                               headers(pk, session))  # fmt: skip
            await asyncio.wait_for(stream.live.wait(), TIMEOUT_S)
            assert stream.status == 200, stream.body
            await asyncio.to_thread(_insert, url, sk, None, "anyone's")
            await stream.wait_for(lambda evs: any(n == "insert" for n, _ in evs))
            with connect(pg_url) as conn:
                set_row_access(conn, pid, "notes", row_access="owner")
            await asyncio.to_thread(_insert, url, sk, None, "bob's", user_id=str(uuid.uuid4()))
            await stream.wait_for(lambda evs: any(n == "error" for n, _ in evs))
            assert [r.get("body") for _, r in stream.rows()] == ["anyone's"]
            error = next(d for n, d in stream.events if n == "error")
            assert error["code"] == "ROW_ACCESS_CHANGED"
            await stream.close()

    asyncio.run(scenario())
