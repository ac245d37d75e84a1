"""``owner_rows``: what a session and the owner rules cost on a select.

One instance, two copies of the same table (100 users x 10 rows, an index on
``user_id``):

- plain: ``row_access = all``; a public key without a session selects one user's rows
  with a filter ``user_id = X`` (the 5-argument admission, no row policies);
- session: ``row_access = owner``; the same public key with that user's session selects
  without a filter — the session is resolved in the admission statement, the compiler adds
  ``user_id = X`` and the row-level security policies check it again.

Both answer the same 10 rows. One request at a time, interleaved in rounds so machine
noise hits both alike; the figure is the ratio of the p50s (both are 2 round trips).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench import framework as fw
from bench.framework import Bench, ScenarioResult
from bench.report import Table

NAME = "owner_rows"
KEYS = ["owner_rows.plain_p50_ms", "owner_rows.session_p50_ms", "owner_rows.ratio"]
USERS = 100
ROWS_PER_USER = 10
ROUNDS = 5


@dataclass(frozen=True)
class Size:
    samples: int  # per variant, over the rounds
    warmup: int  # requests per variant first: connections, prepared admission, metadata


SIZES = fw.Sizes(
    full=Size(samples=1000, warmup=20),
    quick=Size(samples=100, warmup=20),
    smoke=Size(samples=5, warmup=2),
)


def _table(name: str, row_access: str) -> dict[str, Any]:
    return {
        "name": name,
        "columns": [
            {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
            {"name": "user_id", "type": "uuid"},
            {"name": "body", "type": "text"},
        ],
        "owner_column": "user_id",
        "row_access": row_access,
        "realtime": False,
    }


def run(bench: Bench) -> ScenarioResult:
    from gateway.auth.tokens import new_token, token_hash
    from gateway.control import tabledef
    from gateway.control.tables import create_table

    size = SIZES.current()
    project = bench.make_project(table=_table("owned", "owner"))
    with bench.connect() as conn:
        create_table(conn, project["id"], tabledef.parse_table(_table("plain", "all")))
        users = [str(uuid.uuid4()) for _ in range(USERS)]
        conn.execute(
            "INSERT INTO gateway.auth_users (id, project_id, email)"
            " SELECT u::uuid, %s, u || '@bench.test' FROM unnest(%s::text[]) u",
            [project["id"], users],
        )
        for table in ("owned", "plain"):
            conn.execute(
                f'INSERT INTO "{project["schema_name"]}"."{table}" (user_id, body)'
                " SELECT u::uuid, 'note ' || g FROM unnest(%s::text[]) u,"
                " generate_series(1, %s) g",
                [users, ROWS_PER_USER],
            )
        token = new_token()
        conn.execute(
            "WITH f AS (INSERT INTO gateway.auth_session_families (project_id, user_id)"
            " VALUES (%s, %s) RETURNING id, project_id, user_id)"
            " INSERT INTO gateway.auth_sessions (project_id, user_id, family_id, token_hash,"
            " expires_at) SELECT project_id, user_id, id, %s, now() + interval '1 day' FROM f",
            [project["id"], users[0], token_hash(token)],
        )
        conn.execute(f'ANALYZE "{project["schema_name"]}".owned, "{project["schema_name"]}".plain')
    cluster = bench.start_cluster(1, name="ownerrows")
    try:
        plain, session = _measure(cluster.urls[0], project["public_key"], token, users[0], size)
    finally:
        bench.stop_cluster(cluster)
    plain_p50 = round(fw.percentile(plain, 50) * 1000, 3)
    session_p50 = round(fw.percentile(session, 50) * 1000, 3)
    ratio = fw.ratio(session_p50, plain_p50)
    keys = {
        "owner_rows.plain_p50_ms": plain_p50,
        "owner_rows.session_p50_ms": session_p50,
        "owner_rows.ratio": ratio,
    }
    table = Table(
        ["select, filter, no session p50 (ms)", "select, session + owner rules p50 (ms)", "ratio"],
        [[plain_p50, session_p50, ratio]],
    )
    return ScenarioResult(
        name=NAME,
        keys=keys,
        tables=[table],
        details={
            "samples_each": len(plain),
            "plain_p99_ms": round(fw.percentile(plain, 99) * 1000, 3),
            "session_p99_ms": round(fw.percentile(session, 99) * 1000, 3),
        },
    )


def _measure(
    url: str, key: str, token: str, user: str, size: Size
) -> tuple[list[float], list[float]]:
    import httpx

    base = "/v1/inhouse/db/query"
    plain_body = {
        "query": {
            "table": "plain",
            "operation": "select",
            "filters": [{"column": "user_id", "op": "eq", "value": user}],
        }
    }
    owned_body = {"query": {"table": "owned", "operation": "select"}}
    session_headers = {"x-api-key": key, "Authorization": f"Bearer {token}"}

    def once(client: httpx.Client, body: Any, headers: dict[str, str]) -> float:
        started = time.perf_counter()
        response = client.post(base, json=body, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or len(response.json()["data"]) != ROWS_PER_USER:
            raise RuntimeError(f"select answered {response.status_code}: {response.text[:200]}")
        return elapsed

    plain: list[float] = []
    session: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(size.warmup):
            once(client, plain_body, {"x-api-key": key})
            once(client, owned_body, session_headers)
        per_round = max(1, size.samples // ROUNDS)
        for _ in range(ROUNDS):
            plain += [once(client, plain_body, {"x-api-key": key}) for _ in range(per_round)]
            session += [once(client, owned_body, session_headers) for _ in range(per_round)]
    return plain, session
