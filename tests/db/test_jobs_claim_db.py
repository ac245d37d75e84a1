"""``gateway.claim_jobs`` and ``gateway.enqueue_job`` on the real database, called the way
the worker and the API call them: fairness, the per-project cap, concurrency keys,
lease expiry, and quota/idempotency under concurrent callers."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest

CLAIM = "SELECT * FROM gateway.claim_jobs(%s, %s, %s, %s, %s::jsonb)"


def claim(
    db: psycopg.Connection[Any],
    limit: int,
    *,
    per_project: int = 100,
    running: dict[str, int] | None = None,
    lease_s: float = 30.0,
    worker: str = "test-claimer",
) -> list[dict[str, Any]]:
    return db.execute(
        CLAIM, (worker, limit, per_project, lease_s, json.dumps(running or {}))
    ).fetchall()


def bulk_jobs(db: psycopg.Connection[Any], project_id: str, n: int, **extra: Any) -> None:
    key = extra.get("concurrency_key")
    db.execute(
        """
        INSERT INTO gateway.jobs (project_id, name, payload, run_at, concurrency_key)
        SELECT %s, 'bulk', jsonb_build_object('n', g), now() - interval '1 minute', %s
          FROM generate_series(1, %s) g
        """,
        (project_id, key, n),
    )


def due_projects(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(DISTINCT project_id) AS n FROM gateway.jobs "
        "WHERE status = 'pending' AND run_at <= now()"
    ).fetchone()
    return int(row["n"])


@pytest.fixture
def cleanup(db: psycopg.Connection[Any]) -> Any:
    projects: list[str] = []
    yield projects
    for p in projects:
        db.execute("DELETE FROM gateway.jobs WHERE project_id = %s", (p,))
        db.execute("DELETE FROM gateway.job_keys WHERE project_id = %s", (p,))


def test_a_flooded_project_does_not_delay_another_beyond_one_round(
    db: psycopg.Connection[Any], make_project: Any, cleanup: list[str]
) -> None:
    flood, small = make_project(), make_project()
    cleanup += [flood["id"], small["id"]]
    bulk_jobs(db, flood["id"], 20_000)
    db.execute(
        "INSERT INTO gateway.jobs (project_id, name, payload) VALUES (%s, 'mine', '{}')",
        (small["id"],),
    )
    # one round with as many slots as projects have due jobs: everyone gets one
    got = claim(db, due_projects(db))
    assert small["id"] in {str(j["project_id"]) for j in got}
    # and the flood never takes more than the per-project cap in a round
    got = claim(db, 50, per_project=5)
    assert sum(1 for j in got if str(j["project_id"]) == flood["id"]) == 5
    # the cap counts what this worker already runs
    got = claim(db, 50, per_project=5, running={flood["id"]: 5})
    assert all(str(j["project_id"]) != flood["id"] for j in got)


def test_concurrency_key_one_running_per_key(
    db: psycopg.Connection[Any], make_project: Any, cleanup: list[str]
) -> None:
    p = make_project()
    cleanup.append(p["id"])
    bulk_jobs(db, p["id"], 10, concurrency_key="k1")
    first = [j for j in claim(db, 100) if str(j["project_id"]) == p["id"]]
    assert len(first) == 1
    again = [j for j in claim(db, 100, worker="other") if str(j["project_id"]) == p["id"]]
    assert again == []
    # finishing frees the key: the next job of the key can run
    job = first[0]
    with db.cursor() as cur:
        cur.execute(
            "DELETE FROM gateway.job_keys WHERE project_id = %s AND key = 'k1' AND job_id = %s",
            (p["id"], job["id"]),
        )
    nxt = [j for j in claim(db, 100) if str(j["project_id"]) == p["id"]]
    assert len(nxt) == 1 and nxt[0]["id"] != job["id"]


def test_concurrent_claims_never_hand_out_a_job_twice(
    pg_url: str, db: psycopg.Connection[Any], make_project: Any, cleanup: list[str]
) -> None:
    p = make_project()
    cleanup.append(p["id"])
    bulk_jobs(db, p["id"], 600)
    got: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for _ in range(40):
                rows = conn.execute(CLAIM, (name, 10, 1000, 30.0, "{}")).fetchall()
                with lock:
                    got.extend(str(r[0]) for r in rows if str(r[1]) == p["id"])

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 600


def test_expired_lease_goes_back_and_last_attempt_fails(
    db: psycopg.Connection[Any], make_project: Any, cleanup: list[str]
) -> None:
    p = make_project()
    cleanup.append(p["id"])
    db.execute(
        """
        INSERT INTO gateway.jobs (project_id, name, payload, status, attempts_made, max_attempts,
                                  locked_by, lease_until, started_at)
        VALUES (%s, 'again', '{}', 'active', 1, 3, 'dead', now() - interval '1 s', now()),
               (%s, 'last', '{}', 'active', 3, 3, 'dead', now() - interval '1 s', now())
        """,
        (p["id"], p["id"]),
    )
    claim(db, 0)  # a claim round reaps first
    rows = {
        r["name"]: r
        for r in db.execute(
            "SELECT name, status, error FROM gateway.jobs WHERE project_id = %s", (p["id"],)
        ).fetchall()
    }
    assert rows["again"]["status"] == "pending" and "lease expired" in rows["again"]["error"]
    assert rows["last"]["status"] == "failed"


def enqueue(conn: psycopg.Connection[Any], project_id: str, idem: str | None = None) -> Any:
    return conn.execute(
        "SELECT * FROM gateway.enqueue_job(%s, 'q', '{}'::jsonb, now() + interval "
        "'1 hour', 1000, 3, NULL, %s)",
        (project_id, idem),
    ).fetchone()


def test_quota_and_idempotency_exact_under_concurrency(
    pg_url: str, db: psycopg.Connection[Any], make_project: Any, cleanup: list[str]
) -> None:
    p = make_project()
    cleanup.append(p["id"])
    db.execute(
        "UPDATE gateway.projects SET job_runs_limit_monthly = 7 WHERE id = %s",
        (p["id"],),
    )
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for j in range(5):
                try:
                    row = enqueue(conn, p["id"], idem=f"k{(i * 5 + j) % 10}")
                    result = row[0]
                except psycopg.Error as exc:
                    assert exc.sqlstate == "P0J01"
                    result = "quota_exceeded"
                with lock:
                    outcomes.append(result)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 10 distinct keys, limit 7: exactly 7 jobs exist, whatever the interleaving
    assert outcomes.count("created") == 7
    n = db.execute(
        "SELECT count(*) AS n FROM gateway.jobs WHERE project_id = %s", (p["id"],)
    ).fetchone()["n"]
    assert n == 7
    used = db.execute(
        "SELECT used FROM gateway.job_usage WHERE project_id = %s", (p["id"],)
    ).fetchone()["used"]
    assert used == 7


def test_retention_deletes_old_finished_jobs_only(
    pg_url: str, db: psycopg.Connection[Any], make_project: Any, cleanup: list[str]
) -> None:
    import asyncio

    from gateway.jobs import store

    p = make_project()
    cleanup.append(p["id"])
    db.execute(
        """
        INSERT INTO gateway.jobs (project_id, name, status, finished_at, run_at)
        VALUES (%(p)s, 'old', 'completed', now() - interval '8 days', now()),
               (%(p)s, 'old-failed', 'failed', now() - interval '8 days', now()),
               (%(p)s, 'recent', 'completed', now() - interval '6 days', now()),
               (%(p)s, 'waiting', 'pending', NULL, now() + interval '1 day')
        """,
        {"p": p["id"]},
    )

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            return await store.delete_expired(conn, 7)

    assert asyncio.run(run()) >= 2
    names = {
        r["name"]
        for r in db.execute(
            "SELECT name FROM gateway.jobs WHERE project_id = %s", (p["id"],)
        ).fetchall()
    }
    assert names == {"recent", "waiting"}
