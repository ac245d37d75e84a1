"""``realtime``: change-to-subscriber latency over SSE, and what the capture trigger costs.

Latency: 3 instances; 100 SSE subscribers (public key in the ``apikey`` parameter, spread
round-robin over the instances) held by 4 client processes so that parsing 20,000
events/s doesn't bottleneck on one Python process; then 200 single-row INSERTs/s for
20 s by plain SQL (each its own transaction; 4 writer connections share one schedule).
A change's latency, per subscriber, is the time from just before its COMMIT was sent
until that subscriber parsed the event (both sides read CLOCK_MONOTONIC, which is
system-wide on Linux). p50/p99 over every (change, subscriber) pair; how many events
arrived is shown too.

Write cost: 8 connections insert single rows (one transaction each) as fast as they can
into the same table with the capture triggers enabled and disabled
(``ALTER TABLE ... DISABLE TRIGGER USER``), in the order with, without, without, with so
that a drifting machine load cancels out; the key is with / without.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bench import framework as fw
from bench.framework import BASE, Bench, ScenarioResult
from bench.report import Table

NAME = "realtime"
KEYS = ["realtime.p50_ms", "realtime.p99_ms", "realtime.write_ratio_with_trigger"]
INSTANCES = 3
WRITES_PER_S = 200
WRITE_CONNECTIONS = 8
PACED_WRITERS = 4

REALTIME_TABLE = {**fw.ITEMS_TABLE, "name": "items", "realtime": True}


@dataclass(frozen=True)
class Size:
    seconds: float  # of paced writes (BENCH_REALTIME_S overrides)
    write_s: float  # per run of the trigger-cost measurement (4 runs)
    subscribers: int
    client_processes: int  # hold the subscribers (20,000 events/s is too much for one)
    drain_s: float  # after the last write, for the last events to arrive


SIZES = fw.Sizes(
    full=Size(seconds=20.0, write_s=5.0, subscribers=100, client_processes=4, drain_s=3.0),
    quick=Size(seconds=4.0, write_s=2.0, subscribers=100, client_processes=4, drain_s=3.0),
    smoke=Size(seconds=0.5, write_s=0.3, subscribers=4, client_processes=2, drain_s=1.0),
)


# ---------------------------------------------------------------- subscribers (child processes)


def _subscriber_process(
    urls: list[str],
    key: str,
    count: int,
    offset: int,
    ready: Any,
    go: Any,
    stop_at: Any,
    out: Any,
) -> None:
    out.put(asyncio.run(_subscribe(urls, key, count, offset, ready, go, stop_at)))


async def _subscribe(
    urls: list[str], key: str, count: int, offset: int, ready: Any, go: Any, stop_at: Any
) -> dict[str, Any]:
    import httpx

    received: list[tuple[int, float]] = []
    errors: list[str] = []
    connected = 0
    limits = httpx.Limits(max_connections=count + 4, max_keepalive_connections=0)
    timeout = httpx.Timeout(60.0, connect=10.0)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        opened = asyncio.Event()

        async def one(i: int) -> None:
            nonlocal connected
            url = urls[(offset + i) % len(urls)]
            params = {"table": "items", "apikey": key}
            try:
                async with client.stream("GET", f"{url}{BASE}/realtime", params=params) as r:
                    if r.status_code != 200:
                        body = (await r.aread())[:200]
                        errors.append(f"{r.status_code} {body!r}")
                        return
                    connected += 1
                    if connected == count:
                        opened.set()
                    event, data = "", ""
                    async for line in r.aiter_lines():
                        if line == "":
                            if event == "insert" and data:
                                row = _row_id(data)
                                if row is not None:
                                    received.append((row, time.monotonic()))
                            event, data = "", ""
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data += line[5:].strip()
            except (httpx.HTTPError, asyncio.CancelledError) as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    errors.append(f"{type(exc).__name__}: {exc}")

        tasks = [asyncio.create_task(one(i)) for i in range(count)]
        try:
            await asyncio.wait_for(opened.wait(), 60)
        except TimeoutError:
            errors.append(f"only {connected} of {count} subscribers connected")
        ready.release()
        await asyncio.to_thread(go.wait, 120)
        while time.monotonic() < stop_at.value or stop_at.value == 0:
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"received": received, "errors": errors[:5], "connected": connected}


def _row_id(data: str) -> int | None:
    import json

    try:
        row = json.loads(data).get("row") or {}
        return int(row["id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------- writers


async def _paced_writes(url: str, table: sql.Composable, seconds: float) -> dict[int, float]:
    """WRITES_PER_S single-row transactions on a fixed schedule, by PACED_WRITERS connections
    (one connection can't keep the pace when every COMMIT waits for its WAL flush)."""
    sent: dict[int, float] = {}
    insert = sql.SQL("INSERT INTO {} (title, score) VALUES ('rt', 1) RETURNING id").format(table)
    total = int(seconds * WRITES_PER_S)
    next_slot = 0
    start = time.monotonic() + 0.2

    async def writer() -> None:
        nonlocal next_slot
        async with await psycopg.AsyncConnection.connect(url) as conn:
            while next_slot < total:
                slot = next_slot
                next_slot += 1
                wait = start + slot / WRITES_PER_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                row = await (await conn.execute(insert)).fetchone()
                t0 = time.monotonic()
                await conn.commit()
                assert row is not None
                sent[int(row[0])] = t0

    await asyncio.gather(*(writer() for _ in range(PACED_WRITERS)))
    return sent


async def _max_rate(url: str, table: sql.Composable, seconds: float) -> float:
    insert = sql.SQL("INSERT INTO {} (title, score) VALUES ('w', 1)").format(table)
    count = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal count
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                await conn.execute(insert)
                count += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(WRITE_CONNECTIONS)))
    return count / (time.monotonic() - start)


# ---------------------------------------------------------------- the scenario


def run(bench: Bench) -> ScenarioResult:
    size = SIZES.current()
    seconds = float(os.environ.get("BENCH_REALTIME_S") or size.seconds)
    write_s = size.write_s
    project = bench.make_project(table=REALTIME_TABLE, rows=10)
    table = sql.Identifier(project["schema_name"], "items")
    triggers = bench.scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
        [f'"{project["schema_name"]}".items'],
    )
    if not triggers:
        raise RuntimeError("creating a table with realtime: true installed no capture trigger")

    # 1. write cost of the capture trigger
    rates: dict[str, list[float]] = {"with": [], "without": []}
    with psycopg.connect(bench.url, autocommit=True) as conn:
        asyncio.run(_max_rate(bench.url, table, min(1.0, write_s)))  # connections, plpgsql
        for variant in ("with", "without", "without", "with"):
            verb = "ENABLE" if variant == "with" else "DISABLE"
            conn.execute(sql.SQL("ALTER TABLE {} " + verb + " TRIGGER USER").format(table))
            rates[variant].append(asyncio.run(_max_rate(bench.url, table, write_s)))
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(table))
    with_rate = sum(rates["with"]) / 2
    without_rate = sum(rates["without"]) / 2

    # 2. latency
    cluster = bench.start_cluster(INSTANCES, name="rt")
    ctx = mp.get_context("spawn")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    stop_at = ctx.Value("d", 0.0)
    out = ctx.Queue()
    per = [
        size.subscribers // size.client_processes
        + (1 if i < size.subscribers % size.client_processes else 0)
        for i in range(size.client_processes)
    ]
    procs = []
    offset = 0
    try:
        for count in per:
            p = ctx.Process(
                target=_subscriber_process,
                args=(cluster.urls, project["public_key"], count, offset, ready, go, stop_at, out),
                daemon=True,
            )
            p.start()
            procs.append(p)
            offset += count
        for _ in procs:
            if not ready.acquire(timeout=90):
                raise RuntimeError("subscriber processes did not get ready")
        time.sleep(0.5)
        go.set()
        sent = asyncio.run(_paced_writes(bench.url, table, seconds))
        stop_at.value = time.monotonic() + size.drain_s  # let the last events arrive
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        bench.stop_cluster(cluster)

    latencies = []
    received = 0
    errors = [e for r in results for e in r["errors"]]
    connected = sum(r["connected"] for r in results)
    for r in results:
        for row_id, at in r["received"]:
            if row_id in sent:
                latencies.append(at - sent[row_id])
                received += 1
    if not latencies:
        raise RuntimeError(f"no subscriber received an event; errors: {errors}")
    s = fw.summarize_ms(latencies)
    expected = len(sent) * size.subscribers
    write_ratio = fw.ratio(with_rate, without_rate)
    keys = {
        "realtime.p50_ms": s["p50_ms"],
        "realtime.p99_ms": s["p99_ms"],
        "realtime.write_ratio_with_trigger": write_ratio,
    }
    achieved = len(sent) / (max(sent.values()) - min(sent.values())) if len(sent) > 1 else 0.0
    tables = [
        Table(
            [
                "change -> subscriber",
                "p50 ms",
                "p99 ms",
                "max ms",
                "events delivered",
                "subscribers connected",
                "writes/s achieved",
            ],
            [
                [
                    f"{size.subscribers} subscribers, {INSTANCES} instances",
                    s["p50_ms"],
                    s["p99_ms"],
                    s["max_ms"],
                    f"{received:,} of {expected:,}",
                    f"{connected} of {size.subscribers}",
                    round(achieved, 1),
                ]
            ],
        ),
        Table(
            ["inserts/s (8 connections)", "with capture trigger", "without", "with / without"],
            [["single-row transactions", round(with_rate, 1), round(without_rate, 1), write_ratio]],
        ),
    ]
    notes = [
        f"{size.subscribers} SSE subscribers in {size.client_processes} client processes, "
        f"{WRITES_PER_S} writes/s for {seconds:g} s by plain SQL; trigger cost: "
        f"{WRITE_CONNECTIONS} connections x {write_s:g} s per run, runs with/without/"
        "without/with."
    ]
    if errors:
        notes.append(f"subscriber errors (first few): {errors[:3]}")
    details = {
        "rates": rates,
        "errors": errors,
        "events_expected": expected,
        "events_received": received,
    }
    return ScenarioResult(NAME, keys, tables, [], details, notes)
