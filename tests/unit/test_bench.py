"""The bench's own pieces (no speed is asserted anywhere: figures belong to ``make bench``)."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import delay_proxy, wrk
from bench import framework as fw
from bench.__main__ import SCENARIOS, _nest

ISSUE_KEYS = {
    "limiter": [
        f"limiter.{c}.{k}"
        for c in ("postgres", "redis", "memory")
        for k in ("ops_per_s", "p50_ms", "p99_ms", "admitted_of_100")
    ]
    + ["limiter.postgres_vs_redis_p50_ratio"]
    # issue 16: coalesced admission, on and off in the same run
    + [
        "limiter.postgres_uncoalesced.ops_per_s",
        "limiter.postgres_uncoalesced.p50_ms",
        "limiter.postgres_uncoalesced.p99_ms",
        "limiter.postgres_uncoalesced_vs_redis_p50_ratio",
        "limiter.postgres.one_task_p50_ms",
        "limiter.postgres.one_task_p50_ms_uncoalesced",
        "limiter.postgres.one_task_coalesced_vs_uncoalesced_ratio",
    ],
    "round_trips": [
        "round_trips.gateway_p50_ms",
        "round_trips.original_flow_p50_ms",
        "round_trips.injected_rtt_ms",
        "round_trips.gateway_round_trips",
        "round_trips.original_round_trips",
    ],
    "invalidation": ["invalidation.p50_ms", "invalidation.p99_ms", "invalidation.max_ms"],
    "hot_project": ["hot_project.single_rps", "hot_project.spread_rps", "hot_project.ratio"],
    "realtime": ["realtime.p50_ms", "realtime.p99_ms", "realtime.write_ratio_with_trigger"],
    "overload": [
        f"overload.{k}"
        for k in ("knee_rps", "overload_rps", "goodput_ratio", "max_ms", "shed_cpu_ms_per_req")
    ],
    "local_deny": ["local_deny.cpu_ratio"],
    "auth_hashing": [
        "auth_hashing.alone_p95_ms",
        "auth_hashing.loaded_p95_ms",
        "auth_hashing.ratio",
    ],
    "owner_rows": ["owner_rows.plain_p50_ms", "owner_rows.session_p50_ms", "owner_rows.ratio"],
    "jobs": [
        f"jobs.{c}.{k}" for c in ("postgres", "redis") for k in ("jobs_per_s", "p50_ms", "p99_ms")
    ],
}


def test_every_scenario_declares_the_issue_keys() -> None:
    for name in SCENARIOS:
        module = importlib.import_module(f"bench.scenarios.{name}")
        if name == "throughput":
            for case in ("select_by_pk", "select_100", "insert"):
                for k in ("rps", "p50_ms", "p99_ms", "on_vs_off_ratio"):
                    assert f"throughput.{case}.{k}" in module.KEYS
        elif name == "peer":  # issue 23 names the ratios; the raw figures come beside them
            for case in ("read_pk_1", "read_pk_2", "insert", "sign_in"):
                for k in ("rps_ratio", "cpu_ratio"):
                    assert f"peer.{case}.{k}" in module.KEYS
        elif name == "isolation":  # issue 20 names these; victim_wait_ms comes beside them
            attacks = ("like_regex", "jsonb_contains", "query_contains", "slow_write")
            attacks += ("big_batch", "slow_jobs", "slow_queries")
            for attack in attacks:
                assert f"isolation.{attack}.victim_p95_ratio" in module.KEYS
            assert "isolation.realtime_delay_ms" in module.KEYS
            assert "isolation.instance_stalls" in module.KEYS
        elif name == "cells":  # issue 25 asks for cells.*: 1 vs 2 cells and a move's freeze
            assert all(k.startswith("cells.") for k in module.KEYS)
            for case in ("one_cell", "two_cells"):
                for load in ("select", "admissions"):
                    assert f"cells.{case}.{load}_rps" in module.KEYS
                    assert f"cells.{case}.{load}_cpu_ms_per_req" in module.KEYS
            assert "cells.move.freeze_ms" in module.KEYS
        else:
            assert ISSUE_KEYS[name] == module.KEYS


def test_nesting_and_percentiles() -> None:
    assert _nest({"a.b.c": 1, "a.d": 2}) == {"a": {"b": {"c": 1}, "d": 2}}
    values = list(range(1, 101))
    assert fw.percentile(values, 50) == 50
    assert fw.percentile(values, 99) == 99
    assert fw.percentile([7.0], 99) == 7.0
    assert fw.ratio(3, 0) is None
    assert fw.target("x", "<= 2", 1.9, True).verdict == "MET"
    assert fw.target("x", "<= 2", None, False).verdict == "n/a"


def test_delay_proxy_forwards_in_order_and_adds_the_delay() -> None:
    async def scenario() -> tuple[bytes, float]:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.close()

        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        target_port = target.sockets[0].getsockname()[1]
        listen_port = fw.free_port()
        proxy = asyncio.create_task(delay_proxy.serve(listen_port, "127.0.0.1", target_port, 5))
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", listen_port)
                break
            except OSError:
                await asyncio.sleep(0.02)
        payload = b"".join(i.to_bytes(4, "big") for i in range(50_000))  # 200 kB
        t0 = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        got = await reader.readexactly(len(payload))
        elapsed = time.perf_counter() - t0
        writer.close()
        proxy.cancel()
        target.close()
        return (got == payload and got) or b"", elapsed

    got, elapsed = asyncio.run(scenario())
    assert got, "bytes came back changed or out of order"
    assert elapsed >= 0.010  # 5 ms each way, at least


def test_connections_split_as_evenly_as_integers_allow() -> None:
    assert wrk.split_connections(16, 2) == [8, 8]
    assert wrk.split_connections(16, 3) == [6, 5, 5]
    assert wrk.split_connections(200, 3) == [67, 67, 66]


def test_wrk_script_carries_the_keys_and_the_mode(tmp_path: Path) -> None:
    script = wrk.write_script(tmp_path / "s.lua", keys=["k1", "k2"], mode="pk", max_id=42)
    text = script.read_text()
    assert '"k1","k2"' in text and 'local mode = "pk"' in text and "max_id = 42" in text
    assert "/v1/inhouse/db/query" in text


def test_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--scenario" in out.stdout


def test_ab_refuses_what_it_cannot_compare(tmp_path: Path) -> None:
    """``bench.ab`` compares source trees on one schema: a folder that is not a tree, or
    two trees whose migrations differ, is a usage error before anything starts."""
    from bench import ab

    def tree(name: str, migrations: dict[str, str]) -> Path:
        root = tmp_path / name
        (root / "gateway").mkdir(parents=True)
        (root / "gateway" / "__init__.py").write_text("")
        for path, text in migrations.items():
            (root / "alembic" / "versions" / path).parent.mkdir(parents=True, exist_ok=True)
            (root / "alembic" / "versions" / path).write_text(text)
        return root

    first = {"0001_x.py": "up", "sql/0001/f.sql": "CREATE FUNCTION f"}
    a = tree("a", first)
    same = tree("same", first)
    newer = tree("newer", {**first, "0002_y.py": "up"})
    edited = tree("edited", {**first, "sql/0001/f.sql": "CREATE FUNCTION f2"})
    assert not ab._trees_differ_in_migrations(a, same)
    assert ab._trees_differ_in_migrations(a, newer)
    assert ab._trees_differ_in_migrations(a, edited)
    for argv in ([str(tmp_path), str(a)], [str(a), str(newer)]):
        with pytest.raises(SystemExit) as refused:
            ab.main(argv)
        assert refused.value.code == 2
