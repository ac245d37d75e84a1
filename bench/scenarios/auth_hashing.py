"""``auth_hashing``: a select's latency alone vs while 20 sign-ins hash passwords.

One instance. ``SAMPLES`` selects one after another before and ``SAMPLES`` after the load
(p95 "alone"). In between, a separate process keeps 20 sign-ins in flight (each loop its
own users, under the sign-in throttle; every sign-in verifies an argon2id hash on the
instance's hash workers) and, while they run, ``2 x SAMPLES`` of the same selects (p95
"loaded"). The ratio loaded / alone is the
figure; the auth API's cluster test fails above 3x. With hashing on the event loop the ratio is
the hash time over a select's (tens of milliseconds over ~2 ms: 10x and more).

``measure`` is shared with the test so both measure the same thing.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

from bench import framework as fw
from bench.framework import Bench, ScenarioResult
from bench.report import Table

NAME = "auth_hashing"
KEYS = ["auth_hashing.alone_p95_ms", "auth_hashing.loaded_p95_ms", "auth_hashing.ratio"]
SIGN_INS = 20
USERS_PER_CLIENT = 5
ATTEMPTS_PER_USER = 9  # under the default sign-in throttle (10 per email and IP)
SAMPLES = 60
PASSWORD = "bench-password-1"
AUTH = "/v1/inhouse/auth"


@dataclass(frozen=True)
class Size:
    samples: int  # selects alone before and after the load, and twice as many under it


SIZES = fw.Sizes(full=Size(samples=SAMPLES), quick=Size(samples=SAMPLES), smoke=Size(samples=8))


@dataclass
class Figures:
    alone_p95_ms: float
    loaded_p95_ms: float
    ratio: float
    sign_ins_during: int
    selects: int


def make_users(conn: Any, project_id: str, count: int) -> list[str]:
    """``count`` users sharing one argon2id hash (hashed once here, verified each time)."""
    from psycopg.types.json import Jsonb

    from gateway.auth.passwords import hash_password

    hashed = hash_password(PASSWORD)
    emails = [f"load-{uuid.uuid4().hex[:12]}@bench.test" for _ in range(count)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO gateway.auth_users (project_id, email, password_hash, metadata) "
            "VALUES (%s, %s, %s, %s)",
            [(project_id, e, hashed, Jsonb({})) for e in emails],
        )
    return emails


def _select_once(client: Any, table: str) -> float:
    import time

    body = {"query": {"table": table, "operation": "select", "limit": 1}}
    started = time.perf_counter()
    response = client.post("/v1/inhouse/db/query", json=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"select answered {response.status_code}: {response.text[:200]}")
    return elapsed


def _sign_in_load(
    url: str, auth_key: str, emails: list[str], stop: Any, done: Any, failed: Any
) -> None:
    """In its own process (so the client's GIL never delays the measured selects): 20
    concurrent sign-in loops, each over its own users, until ``stop`` is set."""
    import asyncio

    import httpx

    async def loop(client: httpx.AsyncClient, index: int) -> None:
        mine = emails[index * USERS_PER_CLIENT : (index + 1) * USERS_PER_CLIENT]
        for email in [e for e in mine for _ in range(ATTEMPTS_PER_USER)]:
            if stop.is_set():
                return
            r = await client.post(AUTH + "/sign-in", json={"email": email, "password": PASSWORD})
            with (failed if r.status_code != 200 else done).get_lock():
                (failed if r.status_code != 200 else done).value += 1
            if r.status_code != 200:
                return

    async def main() -> None:
        limits = httpx.Limits(max_connections=SIGN_INS)
        async with httpx.AsyncClient(
            base_url=url, headers={"x-api-key": auth_key}, timeout=60, limits=limits
        ) as client:
            await asyncio.gather(*(loop(client, i) for i in range(SIGN_INS)))

    asyncio.run(main())


def measure(
    url: str, select_key: str, auth_key: str, emails: list[str], table: str, samples: int = SAMPLES
) -> Figures:
    import multiprocessing as mp

    import httpx

    ctx = mp.get_context("spawn")
    headers = {"Authorization": f"Bearer {select_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(10):  # warm: connections, metadata cache
            _select_once(client, table)
        alone = [_select_once(client, table) for _ in range(samples)]

        stop, done, failed = ctx.Event(), ctx.Value("i", 0), ctx.Value("i", 0)
        load = ctx.Process(
            target=_sign_in_load, args=(url, auth_key, emails, stop, done, failed), daemon=True
        )
        load.start()
        failures: list[str] = []
        try:
            # let every loop start and the hash queue fill before the first measured select
            while done.value < SIGN_INS // 2 and not failed.value and load.is_alive():
                threading.Event().wait(0.01)
            before = done.value
            loaded = []
            for _ in range(2 * samples):
                if not load.is_alive():
                    break
                loaded.append(_select_once(client, table))
            during = done.value - before
        finally:
            stop.set()
            load.join(60)
            if load.is_alive():
                load.kill()
        if failed.value:
            failures.append(f"{failed.value} sign-ins were refused")
        # "alone" before AND after the load (the in-flight sign-ins have finished when the
        # load process exits): a drift of the machine's background load hits both figures
        alone += [_select_once(client, table) for _ in range(samples)]
    if failures:
        raise RuntimeError(f"sign-ins failed: {failures[:3]}")
    alone_p95 = fw.percentile(alone, 95) * 1000
    loaded_p95 = fw.percentile(loaded, 95) * 1000 if loaded else float("nan")
    return Figures(
        alone_p95_ms=round(alone_p95, 3),
        loaded_p95_ms=round(loaded_p95, 3),
        ratio=round(loaded_p95 / alone_p95, 3),
        sign_ins_during=during,
        selects=len(loaded),
    )


def run(bench: Bench) -> ScenarioResult:
    project = bench.make_project(rows=100)
    with bench.connect() as conn:
        emails = make_users(conn, project["id"], SIGN_INS * USERS_PER_CLIENT)
    cluster = bench.start_cluster(1, name="authhash")
    try:
        figures = measure(
            cluster.urls[0],
            project["server_key"],
            project["public_key"],
            emails,
            "items",
            SIZES.current().samples,
        )
    finally:
        bench.stop_cluster(cluster)
    keys = {
        "auth_hashing.alone_p95_ms": figures.alone_p95_ms,
        "auth_hashing.loaded_p95_ms": figures.loaded_p95_ms,
        "auth_hashing.ratio": figures.ratio,
    }
    table = Table(
        ["select p95 alone (ms)", "while 20 sign-ins hash (ms)", "ratio", "sign-ins meanwhile"],
        [[figures.alone_p95_ms, figures.loaded_p95_ms, figures.ratio, figures.sign_ins_during]],
    )
    return ScenarioResult(
        name=NAME,
        keys=keys,
        tables=[table],
        targets=[fw.target("auth_hashing.ratio", "<= 3", figures.ratio, figures.ratio <= 3)],
        details={"selects_loaded": figures.selects, "sign_ins_during": figures.sign_ins_during},
    )
