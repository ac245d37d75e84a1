"""Micro-benchmark: the CPU of turning a ``/query`` body into a statement (parse + compile).

Not a scenario of ``make bench`` (no gateway, no database): it times the pure part of the
request path that "compile once" (docs/performance.md) is about. Run it against two
checkouts alternately to compare them in one run::

    for i in 1 2 3; do for tree in /work/main .; do
        PYTHONPATH=$tree .venv/bin/python -m bench.compile_micro; done; done

Each case parses the body (``contract.parse_query_body``) and compiles it
(``compiler.compile_query``) with a fresh value per request, as a client would send; the
bodies are those of the ``peer`` scenario's read and insert.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson

from gateway.metadata.catalog import ColumnInfo, Principal, ProjectCatalog, TableInfo
from gateway.query.compiler import compile_query
from gateway.query.contract import parse_query_body

TABLE = TableInfo(
    "items",
    (
        ColumnInfo("id", "bigint", is_nullable=False, is_primary_key=True, has_default=True),
        ColumnInfo("title", "text", is_nullable=False),
        ColumnInfo("done", "boolean", has_default=True),
        ColumnInfo("n", "integer"),
    ),
)
CATALOG = ProjectCatalog("p", "p_bench", {"items": TABLE})
SERVER = Principal("server")


def _select(i: int) -> bytes:
    return orjson.dumps(
        {
            "query": {
                "operation": "select",
                "table": "items",
                "columns": ["id", "title", "n"],
                "filters": [{"column": "id", "op": "eq", "value": i}],
            }
        }
    )


def _insert(i: int) -> bytes:
    return orjson.dumps(
        {
            "query": {
                "operation": "insert",
                "table": "items",
                "data": {"title": f"item {i}", "done": False, "n": i},
                "returning": ["id"],
            }
        }
    )


CASES = {"select_by_pk": _select, "insert_one": _insert}


def run(case: str, n: int) -> float:
    """CPU microseconds per parse + compile (process time: on a shared machine, wall
    time would count the moments another process had the core), over ``n`` requests
    with distinct values."""
    make = CASES[case]
    bodies = [make(i) for i in range(n)]
    start = time.process_time()
    for body in bodies:
        statement = compile_query(parse_query_body(orjson.loads(body)), CATALOG, SERVER)
        _text(statement)
    elapsed = time.process_time() - start
    return elapsed / n * 1e6


def _text(statement: Any) -> str:
    """The SQL string the executor sends: the plan's ``text`` (before compile once, the
    composed statement rendered on every request)."""
    return statement.text if hasattr(type(statement), "text") else statement.sql.as_string()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    run("select_by_pk", 1000)  # warm up imports and caches
    results = {case: round(min(run(case, n) for _ in range(3)), 2) for case in CASES}
    print(orjson.dumps({"us_per_request": results, "n": n}).decode())


if __name__ == "__main__":
    main()
