"""``gateway.admit_many`` aggregated (migration 0013) against a real PostgreSQL.

The function decides a batch with ONE counter-row write per project. It must answer
exactly what the single ``gateway.admit`` answers for the same requests sent one by one in
arrival order: random batches are run both ways on the same starting state, inside one
transaction (``now()`` is the same for both; a savepoint gives each run a fresh copy of the
counters), and the rows and the final counter rows are compared.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.auth.keys import hash_key
from gateway.auth.tokens import token_hash
from gateway.control.keys import create_key
from gateway.control.projects import connect, create_project
from tests.support.admission import LONG_WINDOW_S, counter_row, fresh_window
from tests.support.owner_rows import make_session, make_user, revoke_sessions

# reported from the database's clock_timestamp(): the two runs read it at different moments
CLOCK_FIELDS = ("reset_in", "day_reset_in", "month_reset_in")
COUNTER_COLUMNS = "window_s, window_start, window_count, prev_count, day, day_used, admitted"


def _connect(pg_url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(pg_url, row_factory=dict_row)  # not autocommit: one transaction


def _many(
    conn: psycopg.Connection[Any],
    hashes: list[str],
    costs: list[int],
    window_s: int,
    sliding: bool,
    grows: list[bool] | None = None,
    sessions: list[str | None] | None = None,
) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM gateway.admit_many(%s::text[], %s::int4[], %s, %s, 1000,"
        " %s::bool[], %s::text[])",
        [hashes, costs, window_s, sliding, grows, sessions],
    ).fetchall()


def _one_by_one(
    conn: psycopg.Connection[Any],
    hashes: list[str],
    costs: list[int],
    window_s: int,
    sliding: bool,
    grows: list[bool],
    sessions: list[str | None],
) -> list[dict[str, Any]]:
    rows = []
    for h, c, g, s in zip(hashes, costs, grows, sessions, strict=True):
        rows.append(
            conn.execute(
                "SELECT * FROM gateway.admit(%s, %s, %s, %s, 1000, %s, %s)",
                [h, c, window_s, sliding, g, s],
            ).fetchone()
        )
    return rows


def _state(conn: psycopg.Connection[Any], project_ids: list[str]) -> dict[str, Any]:
    """What a batch may change: the counter rows, keys' and sessions' last_used_at."""
    return {
        "counters": conn.execute(
            f"SELECT project_id, {COUNTER_COLUMNS} FROM gateway.admission_counters"
            " WHERE project_id = ANY(%s) ORDER BY project_id",
            [project_ids],
        ).fetchall(),
        "keys": conn.execute(
            "SELECT id, last_used_at FROM gateway.api_keys WHERE project_id = ANY(%s) ORDER BY id",
            [project_ids],
        ).fetchall(),
        "sessions": conn.execute(
            "SELECT id, last_used_at FROM gateway.auth_sessions WHERE project_id = ANY(%s)"
            " ORDER BY id",
            [project_ids],
        ).fetchall(),
    }


def _same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]], where: str) -> None:
    assert len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        for field in CLOCK_FIELDS:
            a, b = g.pop(field), w.pop(field)
            assert (a is None) == (b is None), (where, i, field, a, b)
            if a is not None:
                assert abs(a - b) < 5.0, (where, i, field, a, b)
        assert g == w, (where, i)


def _randomise(
    conn: psycopg.Connection[Any],
    rng: random.Random,
    projects: list[dict[str, Any]],
    window_s: int,
) -> None:
    """Random limits, statuses, quota usage, key states and counter rows (in the open
    transaction: rolled back after the comparison)."""
    ids = [p["id"] for p in projects]
    conn.execute("DELETE FROM gateway.admission_counters WHERE project_id = ANY(%s)", [ids])
    conn.execute("DELETE FROM gateway.quota_usage WHERE project_id = ANY(%s)", [ids])
    now = conn.execute(
        "SELECT extract(epoch FROM now())::float8 AS e, (now() AT TIME ZONE 'UTC')::date AS d"
    ).fetchone()
    start = int(now["e"] // window_s) * window_s
    for p in projects:
        rate = rng.choice([0, 1, 3, 5, 8, 12, 30, 100, 100])
        daily = rng.choice([None, None, 0, 2, 6, 15])
        status = "suspended" if rng.random() < 0.1 else "active"
        bw = rng.choice([None, None, None, 100])
        dbs = rng.choice([None, None, None, 100])
        conn.execute(
            "UPDATE gateway.projects SET rate_limit_per_minute = %s, requests_limit_daily = %s,"
            " status = %s, bandwidth_limit_monthly = %s, db_size_limit_bytes = %s"
            " WHERE id = %s",
            [rate, daily, status, bw, dbs, p["id"]],
        )
        if rng.random() < 0.5:
            conn.execute(
                "INSERT INTO gateway.quota_usage (project_id, bandwidth_month, bandwidth_bytes,"
                " db_size_bytes) VALUES (%s, date_trunc('month', now() AT TIME ZONE 'UTC'),"
                " %s, %s)",
                [p["id"], rng.choice([0, 50, 200]), rng.choice([None, 50, 200])],
            )
        for key_id in (p["public_key_id"], p["server_key_id"]):
            roll = rng.random()
            conn.execute(
                "UPDATE gateway.api_keys SET status = %s, expires_at = %s::timestamptz,"
                " last_used_at = CASE WHEN %s THEN NULL ELSE now() END WHERE id = %s",
                [
                    "revoked" if roll < 0.1 else "active",
                    "2000-01-01T00:00:00Z" if 0.1 <= roll < 0.15 else None,
                    rng.random() < 0.5,
                    key_id,
                ],
            )
        shape = rng.choice(["none", "none", "same", "same", "previous", "old", "other", "day"])
        if shape == "none":
            continue
        count, prev, used = rng.randint(0, 10), rng.randint(0, 14), rng.randint(0, 12)
        row_window_s, row_start, day = window_s, start, now["d"]
        if shape == "previous":
            row_start = start - window_s
        elif shape == "old":
            row_start = start - 5 * window_s
        elif shape == "other":
            row_window_s = 60 if window_s != 60 else 3600
            row_start = int(now["e"] // row_window_s) * row_window_s
        elif shape == "day":
            day = conn.execute("SELECT %s::date - 1 AS d", [day]).fetchone()["d"]
        conn.execute(
            f"INSERT INTO gateway.admission_counters (project_id, {COUNTER_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [p["id"], row_window_s, row_start, count, prev, day, used, rng.random() < 0.5],
        )


def test_admit_many_answers_as_the_single_admit_applied_in_arrival_order(
    pg_url: str, make_project: Any
) -> None:
    rng = random.Random(16)
    projects = [make_project() for _ in range(5)]
    ids = [p["id"] for p in projects]
    app = projects[0]
    alice, bob = make_user(pg_url, app["id"]), make_user(pg_url, app["id"])
    sessions: list[str | None] = [
        None,
        None,
        None,
        token_hash(make_session(pg_url, app["id"], alice)),
        token_hash(make_session(pg_url, app["id"], alice, ttl_s=-10)),
        token_hash(make_session(pg_url, app["id"], bob)),
    ]
    revoke_sessions(pg_url, bob)
    keys = [hash_key(p[k]) for p in projects for k in ("public_key", "server_key")]
    keys.append(hash_key("sheen_sk_" + "0" * 40))  # no such key
    outcomes: dict[str, int] = {}
    with _connect(pg_url) as conn:
        for iteration in range(150):
            window_s = rng.choice([60, LONG_WINDOW_S])
            sliding = rng.random() < 0.5
            _randomise(conn, rng, projects, window_s)
            n = rng.randint(1, 24)
            # a few keys per batch, so projects get several elements each
            pool = rng.sample(keys, rng.randint(1, 5))
            hashes = [rng.choice(pool) for _ in range(n)]
            costs = [rng.choice([1, 1, 1, 2, 3, 5, 13]) for _ in range(n)]
            grows = [rng.random() < 0.3 for _ in range(n)]
            with_sessions = [rng.choice(sessions) for _ in range(n)]
            conn.execute("SAVEPOINT batch")
            got = _many(conn, hashes, costs, window_s, sliding, grows, with_sessions)
            got_state = _state(conn, ids)
            conn.execute("ROLLBACK TO SAVEPOINT batch")
            want = _one_by_one(conn, hashes, costs, window_s, sliding, grows, with_sessions)
            want_state = _state(conn, ids)
            conn.rollback()
            for row in want:
                outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
            where = f"iteration {iteration} window {window_s} sliding {sliding}"
            _same_rows(got, want, where)
            assert got_state == want_state, where
    print("outcomes compared:", outcomes)
    # the random batches did cover every outcome the function can give
    assert set(outcomes) >= {
        "admitted",
        "rate_limited",
        "quota_exceeded",
        "invalid_key",
        "revoked",
        "expired",
        "suspended",
        "session_not_found",
        "session_expired",
    }


def _writes(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Counter rows this transaction updated and inserted so far."""
    row = conn.execute(
        "SELECT pg_stat_get_xact_tuples_updated('gateway.admission_counters'::regclass) AS u,"
        " pg_stat_get_xact_tuples_inserted('gateway.admission_counters'::regclass) AS i"
    ).fetchone()
    return int(row["u"]), int(row["i"])


def test_a_batch_of_one_project_writes_its_counter_row_once(
    pg_url: str, db: Any, make_project: Any
) -> None:
    project = make_project(rate_limit_per_minute=7)
    other = make_project(rate_limit_per_minute=7)
    fresh_window(db, LONG_WINDOW_S, 60)
    h = hash_key(project["server_key"])
    db.execute(
        "SELECT * FROM gateway.admit_many(%s, %s, %s, false)", [[h], [1], LONG_WINDOW_S]
    )  # the row exists: one element admitted
    batch = [h] * 10 + [hash_key(other["public_key"])] * 3  # 6 more fit, 4 denied
    with _connect(pg_url) as conn:
        before = _writes(conn)
        rows = _many(conn, batch, [1] * len(batch), LONG_WINDOW_S, False)
        after = _writes(conn)
        conn.rollback()
    outcomes = [r["outcome"] for r in rows]
    assert outcomes == ["admitted"] * 6 + ["rate_limited"] * 4 + ["admitted"] * 3
    # one UPDATE of the existing row, one INSERT of the other project's new row
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == 1  # the transaction was rolled back

    with _connect(pg_url) as conn:
        before = _writes(conn)
        for hh in batch:
            conn.execute("SELECT gateway.admit(%s, 1, %s, false)", [hh, LONG_WINDOW_S])
        after = _writes(conn)
        conn.rollback()
    # the measurement itself: the same batch one by one writes once per admitted element
    # (6 + 2 updates, 1 insert)
    assert (after[0] - before[0], after[1] - before[1]) == (8, 1)

    with _connect(pg_url) as conn:  # all denied in the same window: no write at all
        conn.execute(
            "UPDATE gateway.admission_counters SET window_count = 7 WHERE project_id = %s",
            [project["id"]],
        )
        before = _writes(conn)
        rows = _many(conn, [h] * 5, [1] * 5, LONG_WINDOW_S, False)
        after = _writes(conn)
        conn.rollback()
    assert [r["outcome"] for r in rows] == ["rate_limited"] * 5
    assert after == before


def test_a_row_created_by_another_batch_meanwhile_is_locked_and_counted_on(
    pg_url: str, db: Any, make_project: Any
) -> None:
    """Two batches for a project without a counter row: the second's INSERT waits for the
    first's, finds the row, and walks again from it (nothing lost, nothing counted twice)."""
    project = make_project(rate_limit_per_minute=4)
    fresh_window(db, LONG_WINDOW_S, 60)
    h = hash_key(project["server_key"])
    result: dict[str, Any] = {}
    with _connect(pg_url) as first:
        assert [r["outcome"] for r in _many(first, [h, h], [1, 1], LONG_WINDOW_S, False)] == [
            "admitted",
            "admitted",
        ]  # row inserted, not committed

        def second() -> None:
            with psycopg.connect(pg_url, autocommit=True, row_factory=dict_row) as conn:
                result["pid"] = conn.info.backend_pid
                result["rows"] = _many(conn, [h, h, h], [1, 1, 1], LONG_WINDOW_S, False)

        thread = threading.Thread(target=second)
        thread.start()
        for _ in range(500):
            waiting = db.execute(
                "SELECT count(*) AS n FROM pg_stat_activity"
                " WHERE pid = %s AND wait_event_type = 'Lock'",
                [result.get("pid", 0)],
            ).fetchone()["n"]
            if waiting:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the second batch never waited for the first")
        first.commit()
        thread.join(timeout=10)
    rows = result["rows"]
    assert [(r["outcome"], r["quota_used"], r["rate_remaining"]) for r in rows] == [
        ("admitted", 3, 1),
        ("admitted", 4, 0),
        ("rate_limited", 4, 0),
    ]
    row = counter_row(db, project["id"])
    assert row is not None and (row["window_count"], row["day_used"]) == (4, 4)


def test_migration_0013_round_trip_restores_the_per_element_function(pg_url: str) -> None:
    from gateway.db import migrate
    from tests.support.scratchdb import scratch_database

    with scratch_database(pg_url, "mig_agg") as url:
        migrate.upgrade(url)

        def body() -> str:
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT prosrc FROM pg_proc WHERE proname = 'admit_many'"
                ).fetchone()
                assert row is not None
                return str(row[0])

        assert "FOR UPDATE" in body()
        migrate.downgrade(url, "0012")
        assert "FOR UPDATE" not in body() and "gateway.admit(e.h" in body()
        migrate.upgrade(url)
        assert "FOR UPDATE" in body()
        with connect(url) as conn:
            project = create_project(conn, "agg-round-trip")
            key = create_key(conn, project.id, key_type="server")
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT outcome FROM gateway.admit_many(%s, %s, 60, false)",
                [[hash_key(key["key"])] * 2, [1, 1]],
            ).fetchall()
        assert [r[0] for r in rows] == ["admitted", "admitted"]


KEY_JOIN = "%FROM unnest(p_key_hashes) WITH ORDINALITY AS u(h, i)%"


def test_admit_many_plans_its_key_join_once_on_a_database_of_many_projects(
    pg_url: str, make_project: Any
) -> None:
    """The key join's generic plan is costed for the 10 elements PostgreSQL assumes of an
    array parameter; with ~1,000 projects the custom plans of small batches cost less, and
    under ``plan_cache_mode = auto`` every call planned the join again, tripling the
    function's cost (migration 0022). The join must be planned once per connection,
    however the batches and the projects grow. The projects are added, analysed and
    counted in one transaction that is rolled back (ANALYZE's row counts in pg_class are
    not transactional: later tests may be planned for more rows than remain, which
    changes no answer)."""
    app = make_project()
    public = hash_key(app["public_key"])
    with _connect(pg_url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute(
            "INSERT INTO gateway.projects (name, schema_name, tier)"
            " SELECT 'plans-' || g || '-' || md5(random()::text),"
            "        'p_' || substr(md5(random()::text || g), 1, 12), 'free'"
            "   FROM generate_series(1, 1000) g"
        )
        conn.execute(
            "INSERT INTO gateway.api_keys (project_id, key_prefix, key_hash, key_type)"
            " SELECT id, substr(md5(random()::text), 1, 12), md5(random()::text) ||"
            "        md5(random()::text), 'server'"
            "   FROM gateway.projects WHERE name LIKE 'plans-%'"
        )
        conn.execute("ANALYZE gateway.projects, gateway.api_keys, gateway.plans")
        conn.execute("SET pg_stat_statements.track = 'all'")
        conn.execute("SET pg_stat_statements.track_planning = on")

        def plans() -> int:
            return conn.execute(
                "SELECT coalesce(sum(plans), 0)::bigint AS n FROM pg_stat_statements"
                " WHERE query LIKE %s",
                [KEY_JOIN],
            ).fetchone()["n"]

        before = plans()
        for size in (1, 2, 3, 1, 2) * 6:
            rows = _many(conn, [public] * size, [1] * size, LONG_WINDOW_S, True)
            assert [r["outcome"] for r in rows] == ["admitted"] * size
        assert plans() - before <= 1
        conn.rollback()
