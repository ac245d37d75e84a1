"""Admission exactness across OS processes: each burst is its own Python process with its
own pool (``tests/support/admission_burst.py``), started together against one database.

These are the multi-process twins of the in-process tests in ``tests/db/test_admission_db.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.admission import LONG_WINDOW_S, counter_row, db_epoch, fresh_window

ROOT = Path(__file__).resolve().parents[2]


def burst_process(pg_url: str, key: str, requests: int, **options: Any) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.support.admission_burst", pg_url, key]
    args += ["--requests", str(requests)]
    for name, value in options.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def run_bursts(pg_url: str, key: str, per_process: list[int], **options: Any) -> Counter[str]:
    processes = [burst_process(pg_url, key, n, **options) for n in per_process]
    for process in processes:  # a barrier: every pool connected before any burst starts
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    total: Counter[str] = Counter()
    for process in processes:
        stdout, _ = process.communicate(timeout=120)
        assert process.returncode == 0, stdout
        result = json.loads(stdout.strip().splitlines()[-1])
        print("process:", result)
        total.update(result["outcomes"])
    return total


# --- exactness under concurrency, across OS processes ----------------------------------


def test_rate_limit_exact_across_processes(pg_url: str, db: Any, make_project: Any) -> None:
    project = make_project(rate_limit_per_minute=50, requests_per_day=1_000_000)
    fresh_window(db, LONG_WINDOW_S, 120)
    total = run_bursts(
        pg_url, project["public_key"], [100, 100, 100], window_s=LONG_WINDOW_S, concurrency=10
    )
    assert total == {"admitted": 50, "RATE_LIMIT_EXCEEDED": 250}
    row = counter_row(db, project["id"])
    assert row is not None and row["window_count"] == 50 and row["day_used"] == 50


def test_daily_quota_exact_across_processes(pg_url: str, db: Any, make_project: Any) -> None:
    seconds_to_midnight = 86400 - db_epoch(db) % 86400
    if seconds_to_midnight < 300:
        time.sleep(seconds_to_midnight + 1)
    project = make_project(rate_limit_per_minute=100_000, requests_per_day=20)
    total = run_bursts(pg_url, project["public_key"], [34, 33, 33], concurrency=10)
    assert total == {"admitted": 20, "REQUEST_QUOTA_EXCEEDED": 80}
    row = counter_row(db, project["id"])
    assert row is not None and row["day_used"] == 20
    assert row["day"] == db.execute("SELECT (now() AT TIME ZONE 'UTC')::date AS d").fetchone()["d"]
