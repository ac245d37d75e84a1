"""Micro-benchmark of the database side of an admitted select, two source trees side by side.

``python bench/wire_micro.py TREE_A TREE_B [--n 2000] [--rounds 3] [--profile DIR]``
(a ``TREE:transaction`` variant runs with ``GATEWAY_DB_POOLER=transaction``)
(from a checkout) starts one throwaway PostgreSQL, creates a project with a ``todos``
table, then runs, alternating A B B A …, a client process per round from each tree
(``PYTHONPATH=TREE``): N sequential ``Pipeline.query`` calls (admission on, metadata
cached, select one row by primary key) on the gateway's own pool with ONE connection.
Per request it reports the client's CPU (``time.process_time``), PostgreSQL's (utime +
stime of the postmaster and its children, from /proc, read while the client's backend
still exists: only this client runs against the server) and the wall time. With
``--profile`` one more round per tree runs under py-spy (``PY_SPY`` names the binary),
raw stacks in DIR. Not a scenario of ``make bench``: it compares two versions of the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def _children_cpu(ppid: int) -> float:
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid or int(entry) == ppid:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


async def _client(url: str, key: str, n: int, warmup: int, pooler: str) -> dict[str, float]:
    from gateway.db.pool import create_pool
    from gateway.metadata.cache import MetadataCache
    from gateway.query.pipeline import Pipeline
    from gateway.settings import Settings

    settings = Settings.from_env(
        {
            "DATABASE_URL": url,
            "GATEWAY_INSTANCE_ID": "wire-micro",
            "GATEWAY_POOL_MAX": "1",
            "GATEWAY_POOL_MIN": "1",
            "GATEWAY_DB_POOLER": pooler,
        }
    )
    pool = create_pool(settings)
    await pool.open(wait=True, timeout=30)
    # the metadata cache as the app has it (no listener: entries live for the TTL)
    pipeline = Pipeline(settings, pool, metadata=MetadataCache(settings, pool=None))
    query = {
        "operation": "select",
        "table": "todos",
        "columns": ["id", "title", "done"],
        "filters": [{"column": "id", "op": "eq", "value": 1}],
    }
    body = json.dumps({"query": query}).encode()
    for _ in range(warmup):
        out = await pipeline.query(key, body)
        assert out.status == 200, out.body
    print("READY", flush=True)
    sys.stdin.readline()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await pipeline.query(key, body)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    # the backend's CPU is read while it still exists
    print("DONE", flush=True)
    sys.stdin.readline()
    await pool.close()
    return {"client_cpu_ms": cpu / n * 1000, "wall_ms": wall / n * 1000}


PROFILE_GROUPS = (
    "psycopg/",
    "gateway/db/wire",
    "gateway/query/",
    "gateway/admission/",
    "gateway/db/pool",
    "psycopg_pool/",
    "asyncio/",
)


def summarize(path: str, top: int = 12) -> None:
    """py-spy raw stacks → share of the measured requests' samples: cumulative per
    module group, then the functions with the most samples of their own. Stacks outside
    ``Pipeline.query`` (start-up, the pauses between phases) and imports are left out."""
    own: dict[str, int] = {}
    cumulative: dict[str, int] = dict.fromkeys(PROFILE_GROUPS, 0)
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith("Pipeline.query ") for f in frames) or "importlib" in stack:
            continue
        n = int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for group in PROFILE_GROUPS:
            if group in stack:
                cumulative[group] += n
    print(f"{path}: {total} samples")
    for group, n in sorted(cumulative.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * n / max(total, 1):5.1f}% cumulative  {group}")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / max(total, 1):5.1f}% own         {frame}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trees", nargs="*")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", nargs=2, metavar=("URL", "KEY"))
    parser.add_argument(
        "--profile", metavar="DIR", help="one more round per tree under py-spy (raw stacks)"
    )
    parser.add_argument("--summarize", nargs="+", metavar="RAW", help="summarize py-spy stacks")
    args = parser.parse_args()
    if args.summarize:
        for path in args.summarize:
            summarize(path)
        return
    if args.client:
        pooler = os.environ.get("WIRE_MICRO_POOLER", "none")
        result = asyncio.run(_client(args.client[0], args.client[1], args.n, 200, pooler))
        print("RESULT " + json.dumps(result), flush=True)
        return

    from gateway.control import tabledef
    from gateway.control.devserver import DEMO_TABLE as TODOS_TABLE
    from gateway.control.keys import create_key
    from gateway.control.projects import connect, create_project
    from gateway.control.tables import create_table
    from gateway.db import migrate
    from gateway.db.localdb import LocalPostgres

    root = Path(tempfile.mkdtemp(prefix="wire-micro-"))
    root.chmod(0o755)
    server = LocalPostgres(root / "data", durable=False)
    server.start()
    try:
        migrate.upgrade(server.url)
        with connect(server.url) as conn:
            project = create_project(
                conn, "wire-micro", rate_limit_per_minute=10**9, requests_per_day=10**9
            )
            create_table(conn, project.id, tabledef.parse_table(TODOS_TABLE))
            key = create_key(conn, project.id, key_type="server")["key"]
            conn.execute(f'INSERT INTO "{project.schema_name}".todos (title) VALUES (%s)', ("one",))
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        figures: dict[str, list[dict[str, float]]] = {t: [] for t in args.trees}
        order = []
        for r in range(args.rounds):
            order += args.trees if r % 2 == 0 else list(reversed(args.trees))
        runs = [(tree, None) for tree in order]
        if args.profile:
            runs += [(tree, f"{args.profile}/{i}.txt") for i, tree in enumerate(args.trees)]
        for variant, profile in runs:
            # TREE or TREE:transaction (GATEWAY_DB_POOLER=transaction: unnamed statements)
            tree, _, pooler = variant.partition(":")
            env = {**os.environ, "PYTHONPATH": tree, "WIRE_MICRO_POOLER": pooler or "none"}
            command = [sys.executable, __file__, "--n", str(args.n), "--client", server.url, key]
            if profile:
                spy = os.environ.get("PY_SPY") or str(Path(sys.executable).with_name("py-spy"))
                command = [spy, "record", "-r", "250", "--format", "raw", "-o", profile, "--"]
                command += [sys.executable, __file__, "--n", str(args.n), "--client"]
                command += [server.url, key]
            proc = subprocess.Popen(
                command,
                cwd=tree,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline()
            while line and not line.startswith("READY"):  # py-spy's own lines
                line = proc.stdout.readline()
            assert line.startswith("READY"), line
            pg0 = _children_cpu(postmaster)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            assert line.startswith("DONE"), line
            pg_cpu = _children_cpu(postmaster) - pg0
            proc.stdin.write("close\n")
            proc.stdin.flush()
            result: dict[str, Any] = {}
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line[7:])
            proc.wait()
            result["pg_cpu_ms"] = pg_cpu / args.n * 1000
            if profile:
                print(variant, "profiled in", profile, flush=True)
                continue
            figures[variant].append(result)
            print(variant, {k: round(v, 3) for k, v in result.items()}, flush=True)
        print(f"load average {os.getloadavg()[0]:.2f}; medians over {args.rounds} rounds:")
        for variant, rows in figures.items():
            med = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
            print(variant, med)
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
