"""End-to-end A/B of two source trees under one load, side by side in one run.

``python -m bench.ab TREE_A TREE_B [--rounds 8] [--seconds 8] [--instances 2]
[--connections 16] [--mode pk|insert]`` (from a checkout; make the trees with
``git worktree add --detach /tmp/a REV``) starts one throwaway PostgreSQL (fsync off)
and a project with 10,000 rows, then a cluster of gateway instances from each tree
(``PYTHONPATH=TREE`` with ``PYTHONSAFEPATH=1``, so the working directory's code does not
shadow the tree's), and runs wrk against one cluster at a time, alternating A B B A …
Per round it reports req/s and the CPU per request of the gateway processes and of
PostgreSQL (``CpuMeter``: only the measured cluster runs load), then the median of the
per-round ratios B ÷ A.

Both trees run on the schema of the checkout this runs from: compare trees whose
migrations are the same. A single run resolves about ±8 % (docs/performance.md,
"Measuring on this host"): repeat it before believing a small difference. Not a scenario
of ``make bench``: it compares two versions of the code, not the gateway with a target.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench import framework as fw
from bench import wrk

ROWS = 10_000


def _measure_round(
    wrk_bin: str,
    bench: fw.Bench,
    cluster: fw.Cluster,
    script: Path,
    seconds: float,
    connections: list[int],
) -> dict[str, float]:
    meter = fw.CpuMeter(bench, cluster)
    meter.start()
    run = wrk.run(
        wrk_bin,
        [i.url for i in cluster.instances],
        script,
        seconds=seconds,
        connections=connections,
    )
    meter.stop()
    answered = max(run.requests, 1)
    return {
        "rps": run.ok_rps,
        "non2xx": run.non2xx,
        "gateway_ms": meter.gateway_s / answered * 1000,
        "postgres_ms": meter.postgres_s / answered * 1000,
        "total_ms": (meter.gateway_s + meter.postgres_s) / answered * 1000,
    }


def _trees_differ_in_migrations(a: Path, b: Path) -> bool:
    """Whether the migrations (and the frozen SQL they load) differ, file by file."""

    def files(tree: Path) -> dict[str, bytes]:
        versions = tree / "alembic" / "versions"
        return {
            str(p.relative_to(versions)): p.read_bytes()
            for p in versions.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }

    return files(a) != files(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16, help="in all, split evenly")
    parser.add_argument("--mode", choices=("pk", "insert"), default="pk")
    args = parser.parse_args(argv)
    trees = {"A": args.tree_a.resolve(), "B": args.tree_b.resolve()}
    for tree in trees.values():
        if not (tree / "gateway" / "__init__.py").is_file():
            parser.error(f"{tree} is not a source tree (no gateway/__init__.py)")
    if _trees_differ_in_migrations(trees["A"], trees["B"]):
        parser.error("the trees' migrations differ: both would run on one schema")
    try:
        wrk_bin = fw.require_binary("wrk", "wrk")
    except fw.Skip as missing:
        parser.error(str(missing))
    connections = wrk.split_connections(args.connections, args.instances)

    bench = fw.Bench(durable=False)
    bench.start()
    try:
        project = bench.make_project(rows=ROWS)
        script = wrk.write_script(
            bench.root / "ab.lua", keys=[project["public_key"]], mode=args.mode, max_id=ROWS
        )
        clusters = {
            name: bench.start_cluster(
                args.instances,
                env={"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"},
                name=f"ab-{name}",
            )
            for name, tree in trees.items()
        }
        for cluster in clusters.values():  # connections, pools, caches, statements
            wrk.run(
                wrk_bin,
                [i.url for i in cluster.instances],
                script,
                seconds=3,
                connections=connections,
            )
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                figures = _measure_round(
                    wrk_bin, bench, clusters[name], script, args.seconds, connections
                )
                rounds[name].append(figures)
                print(
                    f"round {r + 1} {name}: {figures['rps']:8.1f} req/s  "
                    f"{figures['total_ms']:.3f} ms/req (gateway {figures['gateway_ms']:.3f}, "
                    f"PostgreSQL {figures['postgres_ms']:.3f})  non-2xx {figures['non2xx']}",
                    flush=True,
                )
    finally:
        bench.close()

    print()
    for name, tree in trees.items():
        total = [f["total_ms"] for f in rounds[name]]
        rps = [f["rps"] for f in rounds[name]]
        print(
            f"{name} {tree}: median {statistics.median(total):.3f} ms/req, "
            f"{statistics.median(rps):.1f} req/s"
        )
    ratios = [b["total_ms"] / a["total_ms"] for a, b in zip(rounds["A"], rounds["B"], strict=True)]
    rps_ratios = [b["rps"] / a["rps"] for a, b in zip(rounds["A"], rounds["B"], strict=True)]
    print(
        f"B / A per round: CPU per request {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"median {statistics.median(ratios):.3f} (req/s median {statistics.median(rps_ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
