"""The bench's plumbing: a throwaway PostgreSQL, gateway processes, projects, figures.

Every scenario gets a ``Bench`` (one embedded PostgreSQL for the whole run, migrated to
head) and returns a ``ScenarioResult``: the keys it promised (``KEYS``), the tables it
prints, and the targets it checked. A scenario that cannot run (a missing Debian
package) raises ``Skip`` with a message that says what to do; the other scenarios still
run. Every scenario declares its parameters at the three run sizes (``Sizes``): full,
quick, and the smoke size CI runs so that no scenario can break unnoticed.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import psycopg
from psycopg.rows import dict_row

from bench.report import Table
from gateway.control import tabledef
from gateway.control.keys import create_key
from gateway.control.projects import MAX_LIMIT, connect, create_project
from gateway.control.tables import create_table
from gateway.db import migrate
from gateway.db.localdb import LocalPostgres, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE = "/v1/inhouse/db"
UNREACHABLE_LIMIT = MAX_LIMIT  # 2^31 - 1: never reached in a bench run

# The table every bench project gets: small rows, an identity primary key.
ITEMS_TABLE: dict[str, Any] = {
    "name": "items",
    "client_read": True,
    "client_write": True,
    "columns": [
        {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
        {"name": "title", "type": "text", "nullable": False},
        {"name": "score", "type": "integer", "default": 0},
        {"name": "secret", "type": "text"},
        {"name": "created_at", "type": "timestamptz", "default": "now()"},
    ],
}


class Skip(Exception):
    """The scenario can't run here; the message says why and how to fix it."""


class Mode(enum.StrEnum):
    """How big a run is. ``full`` produces the figures docs/performance.md shows;
    ``quick`` a few seconds per measurement (noisy figures, still written to latest.json,
    marked quick); ``smoke`` the least that exercises every code path (CI), never written
    to latest.json."""

    FULL = "full"
    QUICK = "quick"
    SMOKE = "smoke"


MODE_ENV = "BENCH_MODE"


def mode() -> Mode:
    """The run's size, from ``BENCH_MODE`` (``--quick`` and ``--smoke`` set it; the older
    ``BENCH_QUICK=1`` still means quick). An environment variable, not an argument, so
    that a scenario's child processes and ``BENCH_MODE=smoke make bench`` see it too."""
    value = os.environ.get(MODE_ENV, "").strip().lower()
    if value:
        return Mode(value)
    if os.environ.get("BENCH_QUICK", "").strip().lower() in ("1", "true", "yes", "on"):
        return Mode.QUICK
    return Mode.FULL


SizeT = TypeVar("SizeT")


@dataclass(frozen=True)
class Sizes(Generic[SizeT]):
    """A scenario's parameters (durations, counts) at each run size. Every scenario module
    declares ``SIZES`` with all three, so a new scenario can't be left out of the smoke
    run, and a unit test checks that smoke is never bigger than full."""

    full: SizeT
    quick: SizeT
    smoke: SizeT

    def current(self) -> SizeT:
        return {Mode.FULL: self.full, Mode.QUICK: self.quick, Mode.SMOKE: self.smoke}[mode()]


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Skip(
            f"`{name}` is not installed: install it with `apt-get install {package}` "
            "(Debian/Ubuntu) and run again"
        )
    return path


# ---------------------------------------------------------------- figures


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of raw samples."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


def summarize_ms(samples_s: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 50), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
        "n": len(ms),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    value = a / b
    return round(value, 3) if abs(value) >= 0.01 else float(f"{value:.2g}")


@dataclass
class Target:
    name: str
    goal: str
    value: Any
    met: bool | None  # None: not measured (scenario skipped or figure missing)

    @property
    def verdict(self) -> str:
        return "n/a" if self.met is None else ("MET" if self.met else "MISSED")


def target(name: str, goal: str, value: Any, ok: Any) -> Target:
    return Target(name, goal, value, None if value is None else bool(ok))


@dataclass
class ScenarioResult:
    name: str
    keys: dict[str, Any]  # exactly the scenario's KEYS, dotted
    tables: list[Table] = field(default_factory=list)  # printed, and rendered in the docs
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # extra figures -> _meta.details
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # the whole scenario could not run here (Skip)
    failed: str | None = None  # it raised: a bug, never a figure
    # keys left null on purpose, with the reason (e.g. a contender whose binary is missing);
    # any other null key is a broken scenario
    unmeasured: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def unmeasured(keys: dict[str, Any], word: str, reason: str) -> dict[str, str]:
    """The null keys that name ``word`` (a contender that could not run), with why."""
    return {k: reason for k, v in keys.items() if v is None and word in k}


def machine_description() -> dict[str, Any]:
    """The facts a figure needs beside it: figures from a loaded 2-core box and from an
    idle 16-core one are not comparable, only ratios measured in the same run are."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def cpu_times() -> list[int] | None:
    """The machine's CPU time so far by kind, in clock ticks (``/proc/stat``'s ``cpu``
    line: user, nice, system, idle, iowait, irq, softirq, steal, ...); None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    return [int(x) for x in fields[1:]]


STEAL_FIELD = 7


def steal_percent(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of the machine's CPU time between two ``cpu_times`` readings that the
    hypervisor gave to other guests. On a shared virtual machine that share moves the
    CPU a request costs (other guests' work evicts our caches) by more than most changes
    do, so a run records it beside its figures."""
    if before is None or after is None or len(before) <= STEAL_FIELD:
        return None
    deltas = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(deltas[: STEAL_FIELD + 1])
    if total <= 0:
        return None
    return round(100.0 * deltas[STEAL_FIELD] / total, 1)


def source_revision() -> str | None:
    """The checkout's commit, ``+dirty`` when tracked files differ from it (the results
    and the rendered document excepted: a run writes them itself)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!bench/results",
            ":!docs/performance.md",
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if changed else commit


# ---------------------------------------------------------------- processes


class Processes:
    """Child processes the bench started; all of them are stopped when the bench ends."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = log.open("wb") if log else subprocess.DEVNULL
        try:
            child = subprocess.Popen(
                list(args), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.children.append(child)
        return child

    @staticmethod
    def stop(child: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child)
        self.children.clear()


def wait_http(
    url: str, timeout: float = 30.0, child: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {child.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")


@dataclass
class Instance:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    instances: list[Instance]

    @property
    def urls(self) -> list[str]:
        return [i.url for i in self.instances]


# ---------------------------------------------------------------- the bench


class Bench:
    """One throwaway PostgreSQL for the run, plus helpers to provision and start gateways.

    The server is durable (fsync on, ``synchronous_commit`` at its default ``on``): the
    admission chooses its own commit mode, and hot-row figures on a server that never
    flushes would flatter it.
    """

    def __init__(self, *, durable: bool = True, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
        self.root.chmod(0o755)
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.logs.chmod(0o777)
        self.durable = durable
        self.keep = keep
        self.server = LocalPostgres(
            self.root / "data",
            durable=durable,
            max_connections=300,
            extra_settings={"shared_buffers": "256MB", "pg_stat_statements.track": "top"},
        )
        self.processes = Processes()
        self.url = ""

    def start(self) -> None:
        self.url = self.server.start()
        migrate.upgrade(self.url, "heads")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def close(self) -> None:
        self.processes.stop_all()
        if self.keep:
            print(f"(kept {self.root})", file=sys.stderr)
            self.server.stop()
            return
        self.server.destroy()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- database helpers

    def connect(self, **kwargs: Any) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, **kwargs)

    def scalar(self, query: str, params: Sequence[Any] = ()) -> Any:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
        return row[0] if row else None

    def has_relation(self, name: str) -> bool:
        return bool(self.scalar("SELECT to_regclass(%s) IS NOT NULL", [name]))

    def has_function(self, name: str) -> bool:
        schema, _, func = name.rpartition(".")
        return bool(
            self.scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n"
                " ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = %s)",
                [schema or "public", func],
            )
        )

    def settle(self, timeout: float = 30.0) -> float:
        """Let the previous scenario's after-effects pass: a CHECKPOINT, then wait (bounded)
        until no autovacuum worker runs (1000 freshly filled tables keep autovacuum busy
        for a while and skew the next scenario). Returns the seconds waited."""
        start = time.monotonic()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            while time.monotonic() - start < timeout:
                busy = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                ).fetchone()
                if not busy or busy[0] == 0:
                    break
                time.sleep(0.5)
        return time.monotonic() - start

    def reset_stat_statements(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")

    def top_statements(self, limit: int = 6) -> list[dict[str, Any]]:
        """What PostgreSQL spent its time on since the last reset (pg_stat_statements)."""
        with self.connect() as conn:
            rows = conn.execute(
                """
                SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 110) AS query,
                       calls, round(total_exec_time::numeric, 1) AS total_ms,
                       round((total_exec_time / greatest(calls, 1))::numeric, 4) AS mean_ms
                  FROM pg_stat_statements
                 WHERE query NOT ILIKE '%%pg_stat_statements%%'
                 ORDER BY total_exec_time DESC
                 LIMIT %s
                """,
                [limit],
            ).fetchall()
        return [dict(r) for r in rows]

    def make_project(
        self,
        *,
        conn: psycopg.Connection[Any] | None = None,
        rate_limit_per_minute: int = UNREACHABLE_LIMIT,
        requests_per_day: int = UNREACHABLE_LIMIT,
        table: dict[str, Any] | None = ITEMS_TABLE,
        rows: int = 0,
        name: str | None = None,
        public_key: bool = True,
    ) -> dict[str, Any]:
        """A project with an ``items`` table (``rows`` rows) and a public and a server key."""
        own = conn is None
        c = conn or connect(self.url)
        try:
            project = create_project(
                c,
                name or f"bench-{uuid.uuid4().hex[:12]}",
                rate_limit_per_minute=rate_limit_per_minute,
                requests_per_day=requests_per_day,
            )
            if table is not None:
                create_table(c, project.id, tabledef.parse_table(table))
            public = (
                _create_key(c, project.id, "public") if public_key else {"key": None, "id": None}
            )
            server = _create_key(c, project.id, "server")
            if rows and table is not None:
                c.execute(
                    f'INSERT INTO "{project.schema_name}"."{table["name"]}" (title, score, secret)'
                    " SELECT 'item ' || g, g %% 100, 's' || g FROM generate_series(1, %s) g",
                    [rows],
                )
            if own:
                c.commit()
        finally:
            if own:
                c.close()
        return {
            "id": project.id,
            "name": project.name,
            "schema_name": project.schema_name,
            "public_key": public["key"],
            "server_key": server["key"],
            "public_key_id": public["id"],
            "server_key_id": server["id"],
        }

    # -- gateway processes

    def start_cluster(
        self,
        count: int,
        *,
        env: dict[str, str] | None = None,
        database_url: str | None = None,
        direct_url: str | None = None,
        name: str = "gw",
    ) -> Cluster:
        instances = []
        for index in range(count):
            port = free_port()
            child_env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
                "DATABASE_URL": database_url or self.url,
                "GATEWAY_INSTANCE_ID": f"{name}-{index}-{port}",
                "GATEWAY_INSTANCES": str(count),
                "PYTHONUNBUFFERED": "1",
                **(env or {}),
            }
            if direct_url:
                child_env["DATABASE_DIRECT_URL"] = direct_url
            log = self.logs / f"{name}-{index}-{port}.log"
            process = self.processes.start(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=child_env,
                log=log,
            )
            instances.append(Instance(port, process, log))
        for instance in instances:
            try:
                wait_http(instance.url + "/readyz", 60.0, instance.process)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{instance.output()[-3000:]}") from None
        return Cluster(instances)

    def stop_cluster(self, cluster: Cluster) -> None:
        for instance in cluster.instances:
            self.processes.stop(instance.process)
            with contextlib.suppress(ValueError):
                self.processes.children.remove(instance.process)


def _create_key(conn: psycopg.Connection[Any], project_id: str, key_type: str) -> dict[str, Any]:
    """create_key, retried on a prefix collision.

    The visible prefix (12 characters: ``sheen_sk_`` + 3 random base62 characters, 238,328
    values per type) is UNIQUE in ``api_keys``: among 1000 keys of one type at least one
    collision is likely (~88 %), and ``create_key`` does not retry by itself.
    """
    for attempt in range(5):
        try:
            return create_key(conn, project_id, key_type=key_type)
        except psycopg.errors.UniqueViolation:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(payload, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n",
        encoding="utf-8",
    )
    tmp.replace(path)


# ---------------------------------------------------------------- HTTP


class HttpClient:
    """A keep-alive HTTP/1.1 connection to one instance (stdlib: the least client overhead)."""

    def __init__(self, base_url: str, key: str | None = None, timeout: float = 30.0) -> None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self._factory = lambda: http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=timeout
        )
        self.conn = self._factory()
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=payload, headers=self.headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, OSError):
                self.conn.close()
                self.conn = self._factory()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def query(self, query: dict[str, Any]) -> tuple[int, bytes]:
        return self.request("POST", f"{BASE}/query", {"query": query})

    def close(self) -> None:
        self.conn.close()


def select_by_pk(row_id: int, table: str = "items") -> dict[str, Any]:
    return {
        "operation": "select",
        "table": table,
        "columns": ["id", "title", "score"],
        "filters": [{"column": "id", "op": "eq", "value": row_id}],
    }


# ---------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of a live process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def postgres_pids(bench: Bench) -> list[int]:
    """The bench server's postmaster and every process it forked (backends, walwriter, ...)."""
    return server_pids(bench.server)


def cpu_seconds(pids: Sequence[int]) -> float:
    """The user+system CPU seconds the live processes among ``pids`` have spent so far."""
    return sum(stat[1] for pid in pids if (stat := _proc_stat(pid)))


def server_pids(server: LocalPostgres) -> list[int]:
    """The postmaster of ``server`` and every process it forked."""
    try:
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[0] == postmaster:
                pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU seconds spent by gateway processes and by PostgreSQL between start() and stop()."""

    def __init__(self, bench: Bench, cluster: Cluster | None = None) -> None:
        self.bench = bench
        self.gateway_pids = [i.process.pid for i in cluster.instances] if cluster else []
        self.before: dict[int, float] = {}
        self.gateway_s = 0.0
        self.postgres_s = 0.0
        self.total_gateway_s = 0.0
        self.total_postgres_s = 0.0

    def _snapshot(self) -> tuple[dict[int, float], dict[int, float]]:
        gw = {p: s[1] for p in self.gateway_pids if (s := _proc_stat(p))}
        pg = {p: s[1] for p in postgres_pids(self.bench) if (s := _proc_stat(p))}
        return gw, pg

    def start(self) -> None:
        self._gw0, self._pg0 = self._snapshot()

    def stop(self) -> None:
        gw1, pg1 = self._snapshot()
        self.gateway_s = sum(v - self._gw0.get(p, 0.0) for p, v in gw1.items())
        # a backend that started during the run counts from zero; one that ended is lost
        self.postgres_s = sum(v - self._pg0.get(p, 0.0) for p, v in pg1.items())

    def accumulate(self) -> None:
        self.total_gateway_s += self.gateway_s
        self.total_postgres_s += self.postgres_s
