"""A project moved between cells under continuous writes, with a realtime subscriber.

Two cells (databases), two gateway instances. A writer inserts rows one after another
through both instances, retrying the 503s of the freeze; a subscriber follows the table
and reconnects with its Last-Event-ID whenever its stream ends (the move ends it). After
the move every acknowledged insert is on the target, and the subscriber received every
one of them exactly once. The measured write freeze is printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.cells import make_cell_project, register_cell, remove_cell, unique_cell_name
from tests.support.harness import GatewayCluster
from tests.support.polling import wait_until_async
from tests.support.sse import REALTIME_ENV, Stream

BASE = "/v1/inhouse/db"


@pytest.fixture
def cells(pg_url: str, cell_databases: Any) -> Any:
    urls = cell_databases(2)
    names = [unique_cell_name("s"), unique_cell_name("t")]
    for name, url in zip(names, urls, strict=True):
        register_cell(pg_url, name, url)
    yield list(zip(names, urls, strict=True))
    for name in names:
        remove_cell(pg_url, name)


def test_a_move_under_continuous_writes_loses_no_write_and_no_event(
    pg_url: str, cells: Any, gateway_cluster: Any
) -> None:
    (source, source_url), (target, target_url) = cells
    cluster: GatewayCluster = gateway_cluster(2, env=REALTIME_ENV)
    project = make_cell_project(pg_url, source, source_url)
    acked: list[str] = []
    refused = 0
    received: list[str] = []
    move: dict[str, Any] = {}
    opened: list[int] = []

    async def writer(stop: asyncio.Event) -> None:
        nonlocal refused
        async with httpx.AsyncClient(timeout=30) as client:
            n = 0
            while not stop.is_set():
                title = f"w{n:05d}"
                r = await client.post(
                    cluster.urls[n % 2] + BASE + "/query",
                    json={
                        "query": {"operation": "insert", "table": "todos", "data": {"title": title}}
                    },
                    headers={"Authorization": f"Bearer {project['server_key']}"},
                )
                if r.status_code == 503:
                    refused += 1
                    await asyncio.sleep(0.05)
                    continue
                assert r.status_code == 200, r.text
                acked.append(title)
                n += 1
                await asyncio.sleep(0.01)

    async def subscriber(stop: asyncio.Event) -> None:
        last_id = None
        while True:
            stream = Stream(cluster.urls[1], key=project["public_key"], last_event_id=last_id)
            status = await stream.wait_open()
            opened.append(status)
            if status != 200:
                await stream.close()
                await asyncio.sleep(0.2)
                continue
            # until the stream ends (the move ends it), or, once the writer stopped,
            # until every acknowledged write has arrived
            while not stream.ended.is_set() and not (
                stop.is_set() and len(received) + len(stream.changes) >= len(acked)
            ):
                await asyncio.sleep(0.05)
            received.extend(e.data["row"]["title"] for e in stream.changes)
            last_id = stream.last_id or last_id
            await stream.close()
            if stop.is_set() and len(received) >= len(acked):
                return

    def run_move() -> None:
        env = {**os.environ, "DATABASE_URL": pg_url}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "project",
                "move",
                project["name"],
                "--to",
                target,
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        move.update(json.loads(done.stdout))

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(subscriber(stop))]
        # the writer starts once the subscriber's first stream is open: it sees every write
        await wait_until_async(lambda: opened, timeout=15, message="the first stream")
        tasks.insert(0, asyncio.create_task(writer(stop)))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(run_move)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.wait_for(tasks[0], 30)
        try:
            await asyncio.wait_for(tasks[1], 30)
        except TimeoutError:
            raise AssertionError(
                f"the subscriber did not get every write: {len(received)} events of "
                f"{len(acked)} writes; missing {sorted(set(acked) - set(received))[:5]}; "
                f"move {move}"
            ) from None

    started = time.monotonic()
    asyncio.run(main())
    print(
        f"move: {move}; writes {len(acked)} acknowledged, {refused} refused (503) and "
        f"retried; events {len(received)}; {time.monotonic() - started:.1f} s"
    )
    assert move["state"] == "done" and move["freeze_ms"] is not None
    with psycopg.connect(target_url) as conn:
        present = {
            r[0] for r in conn.execute(f'SELECT title FROM "{project["schema_name"]}".todos')
        }
    assert set(acked) <= present, sorted(set(acked) - present)[:5]
    assert len(present) == len(acked)  # nothing written twice, nothing extra
    assert sorted(received) == sorted(acked), (
        sorted(set(acked) - set(received))[:5],
        len(received),
        len(set(received)),
    )
