"""``auth_hashing``: a select's latency alone vs while 20 sign-ins hash passwords.

One instance. First ``SAMPLES`` selects by primary key, one after another (p95 "alone").
Then 20 client threads sign in back to back (each its own users, under the sign-in
throttle; every sign-in verifies an argon2id hash on the instance's hash workers) and,
while they run, the same selects again (p95 "loaded"). The ratio loaded / alone is the
figure; tests/test_auth_api.py fails above 3x. With hashing on the event loop the ratio is
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

NAME = "auth_hashing"
KEYS = ["auth_hashing.alone_p95_ms", "auth_hashing.loaded_p95_ms", "auth_hashing.ratio"]
SIGN_INS = 20
USERS_PER_CLIENT = 5
ATTEMPTS_PER_USER = 9  # under the default sign-in throttle (10 per email and IP)
SAMPLES = 60
PASSWORD = "bench-password-1"
AUTH = "/v1/inhouse/auth"


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


def measure(
    url: str, select_key: str, auth_key: str, emails: list[str], table: str, samples: int = SAMPLES
) -> Figures:
    import httpx

    headers = {"Authorization": f"Bearer {select_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(10):  # warm: connections, metadata cache
            _select_once(client, table)
        alone = [_select_once(client, table) for _ in range(samples)]

        stop = threading.Event()
        started = threading.Barrier(SIGN_INS + 1)
        done = [0] * SIGN_INS
        failures: list[str] = []

        def sign_in(index: int) -> None:
            mine = emails[index * USERS_PER_CLIENT : (index + 1) * USERS_PER_CLIENT]
            attempts = [e for e in mine for _ in range(ATTEMPTS_PER_USER)]
            with httpx.Client(base_url=url, headers={"x-api-key": auth_key}, timeout=60) as c:
                started.wait()
                for email in attempts:
                    if stop.is_set():
                        return
                    r = c.post(AUTH + "/sign-in", json={"email": email, "password": PASSWORD})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:120]}")
                        return
                    done[index] += 1

        threads = [threading.Thread(target=sign_in, args=(i,)) for i in range(SIGN_INS)]
        for t in threads:
            t.start()
        started.wait()
        try:
            # let the hash queue fill before the first measured select
            while sum(done) < SIGN_INS // 2 and not failures and any(t.is_alive() for t in threads):
                threading.Event().wait(0.01)
            before = sum(done)
            loaded = []
            for _ in range(samples):
                if not any(t.is_alive() for t in threads):
                    break
                loaded.append(_select_once(client, table))
            during = sum(done) - before
        finally:
            stop.set()
            for t in threads:
                t.join()
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
    fw.require_query_api()
    project = bench.make_project(rows=100)
    with bench.connect() as conn:
        emails = make_users(conn, project["id"], SIGN_INS * USERS_PER_CLIENT)
    cluster = bench.start_cluster(1, name="authhash")
    try:
        figures = measure(
            cluster.urls[0], project["server_key"], project["public_key"], emails, "items"
        )
    finally:
        bench.stop_cluster(cluster)
    keys = {
        "auth_hashing.alone_p95_ms": figures.alone_p95_ms,
        "auth_hashing.loaded_p95_ms": figures.loaded_p95_ms,
        "auth_hashing.ratio": figures.ratio,
    }
    table = fw.markdown_table(
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
