"""Metadata cache, notification triggers and the LISTEN connection — against real PostgreSQL.

Faults are caused for real: ``pg_terminate_backend`` on the listener's backend, a dropped
LISTEN registration (``UNLISTEN *`` on the listener's own connection), and a TCP proxy
that silently stops forwarding (a half-open connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from gateway.db import migrate
from gateway.db.pool import create_pool
from gateway.metadata.cache import MetadataCache, ProjectNotFound, load_catalog
from gateway.metadata.listener import MetadataListener
from gateway.settings import Settings
from tests.support.polling import wait_until_async
from tests.support.tcpproxy import TcpProxy

T = TypeVar("T")
CHANNEL = "gateway_metadata"


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def settings_for(pg_url: str, **changes: Any) -> Settings:
    base = Settings(
        database_url=pg_url,
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
        pool_max=4,
        pool_min=1,
    )
    return base.with_changes(**changes)


def drain(conn: psycopg.Connection[Any], timeout: float = 0.5) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=timeout) if n.channel == CHANNEL]


def wait_for_notifications(
    conn: psycopg.Connection[Any], want: int, timeout: float = 5.0
) -> list[str]:
    """The payloads of ``want`` notifications, plus any that follow within 0.3 s (the
    window the tests use for "nothing more"), so a duplicate still shows.

    Returns as soon as they are there: ``drain`` listens for its whole timeout, and waiting
    5 s after every change made the trigger tests take a minute.
    """
    got: list[str] = []
    for notification in conn.notifies(timeout=timeout):
        if notification.channel == CHANNEL:
            got.append(notification.payload)
            if len(got) >= want:
                break
    return got + drain(conn, 0.3) if len(got) >= want else got


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate`` held (the tests assert how fast a change arrived)."""
    started = time.monotonic()
    await wait_until_async(predicate, timeout=timeout, interval=0.01, message=what)
    return time.monotonic() - started


@pytest.fixture
def listen_conn(pg_url: str) -> Any:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        yield conn


# --- the load --------------------------------------------------------------------------------


def test_catalog_is_loaded_in_one_query_with_every_field(
    pg_url: str, make_project: Any, db: Any
) -> None:
    project = make_project()

    async def main() -> Any:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            return await load_catalog(conn, project["id"])

    catalog = run(main())
    assert catalog.project_id == project["id"]
    assert catalog.schema_name == project["schema_name"]
    todos = catalog.table("todos")
    assert todos is not None
    # tables get realtime capture unless their definition says "realtime": false
    assert (todos.allow_client_read, todos.allow_client_write, todos.realtime) == (
        True,
        True,
        True,
    )
    assert [c.name for c in todos.columns] == [
        "id",
        "title",
        "done",
        "tags",
        "meta",
        "owner_email",
        "internal_note",
        "created_at",
    ]
    assert todos.primary_key == ("id",)
    rows = db.execute(
        """
        SELECT c.* FROM gateway.column_registry c JOIN gateway.table_registry t ON t.id = c.table_id
         WHERE t.project_id = %s AND t.name = 'todos' ORDER BY c.ordinal
        """,
        [project["id"]],
    ).fetchall()
    for row, col in zip(rows, todos.columns, strict=True):
        assert (
            col.data_type,
            col.is_nullable,
            col.is_primary_key,
            col.has_default,
            col.is_sensitive,
            col.allow_client_read,
            col.allow_client_write,
        ) == (
            row["data_type"],
            row["is_nullable"],
            row["is_primary_key"],
            row["has_default"],
            row["is_sensitive"],
            row["allow_client_read"],
            row["allow_client_write"],
        )
    assert todos.column("owner_email").is_sensitive  # type: ignore[union-attr]
    assert todos.column("done").has_default  # type: ignore[union-attr]
    # Immutable and shareable.
    with pytest.raises(TypeError):
        catalog.tables["x"] = todos  # type: ignore[index]
    with pytest.raises(AttributeError):
        todos.name = "other"  # type: ignore[misc]


def test_unknown_project_is_not_found_and_not_cached(pg_url: str) -> None:
    async def main() -> None:
        pool = create_pool(settings_for(pg_url))
        await pool.open(wait=True)
        try:
            cache = MetadataCache(settings_for(pg_url), pool)
            with pytest.raises(ProjectNotFound):
                await cache.get(str(uuid.uuid4()))
            with pytest.raises(ProjectNotFound):
                await cache.get("not-a-uuid")
            assert len(cache) == 0
        finally:
            await pool.close()

    run(main())


# --- single flight, LRU, TTL ---------------------------------------------------------------


class CountingLoader:
    def __init__(self, delay: float = 0.05, fail: int = 0) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail

    async def __call__(self, conn: Any, project_id: str) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)  # let every concurrent miss pile up on the flight
        if self.fail:
            self.fail -= 1
            raise psycopg.OperationalError("injected load failure")
        return await load_catalog(conn, project_id)


def test_single_flight_100_concurrent_misses_cause_one_load(pg_url: str, make_project: Any) -> None:
    project = make_project()

    async def main() -> None:
        settings = settings_for(pg_url)
        pool = create_pool(settings)
        await pool.open(wait=True)
        try:
            loader = CountingLoader()
            cache = MetadataCache(settings, pool, loader=loader)
            results = await asyncio.gather(*(cache.get(project["id"]) for _ in range(100)))
            assert loader.calls == 1
            assert cache.stats()["loads"] == 1
            assert cache.stats()["joined"] == 99
            assert all(r is results[0] for r in results)  # one shared object
            # Failures reach every waiter and are not cached.
            cache.invalidate(project["id"])
            failing = CountingLoader(fail=1)
            cache._loader = failing
            outcomes = await asyncio.gather(
                *(cache.get(project["id"]) for _ in range(20)), return_exceptions=True
            )
            assert failing.calls == 1
            assert all(isinstance(o, psycopg.OperationalError) for o in outcomes)
            assert len(cache) == 0
            again = await cache.get(project["id"])
            assert failing.calls == 2 and again.table("todos") is not None
        finally:
            await pool.close()

    run(main())


def test_cancelled_loader_hands_over_to_a_waiter(pg_url: str, make_project: Any) -> None:
    project = make_project()

    async def main() -> None:
        settings = settings_for(pg_url)
        pool = create_pool(settings)
        await pool.open(wait=True)
        try:
            loader = CountingLoader(delay=0.3)
            cache = MetadataCache(settings, pool, loader=loader)
            leader = asyncio.create_task(cache.get(project["id"]))
            await asyncio.sleep(0.05)
            waiter = asyncio.create_task(cache.get(project["id"]))
            await asyncio.sleep(0.05)
            leader.cancel()
            catalog = await asyncio.wait_for(waiter, 10)
            assert catalog.table("todos") is not None
            assert loader.calls == 2
        finally:
            await pool.close()

    run(main())


def test_lru_bound_is_never_exceeded(pg_url: str, make_project: Any) -> None:
    projects = [make_project()["id"] for _ in range(6)]

    async def main() -> None:
        settings = settings_for(pg_url, metadata_cache_max_projects=3)
        pool = create_pool(settings)
        await pool.open(wait=True)
        try:
            cache = MetadataCache(settings, pool)
            sizes = []
            for round_ in range(3):
                for pid in projects:
                    await cache.get(pid)
                    sizes.append(len(cache))
                    await cache.get(projects[0])  # keep the first one hot
                    sizes.append(len(cache))
                # concurrent misses for many projects at once
                await asyncio.gather(*(cache.get(pid) for pid in reversed(projects)))
                sizes.append(len(cache))
                assert round_ >= 0
            assert max(sizes) <= 3
            await cache.get(projects[0])
            await cache.get(projects[5])
            await cache.get(projects[4])
            assert cache.peek(projects[0]) is not None  # recently used: kept
            await cache.get(projects[1])  # evicts the least recently used: projects[0]
            assert cache.peek(projects[0]) is None
            stats = cache.stats()
            print("LRU stats:", stats)
            assert stats["entries"] == 3 and stats["evictions"] > 0
        finally:
            await pool.close()

    run(main())


class FakeListenerState:
    def __init__(self) -> None:
        self.connected = True
        self.disconnected_since: float | None = None


def test_ttl_and_degraded_ttl(pg_url: str, make_project: Any) -> None:
    project = make_project()
    pid = project["id"]

    async def main() -> None:
        settings = settings_for(pg_url, metadata_ttl_s=1.5, metadata_degraded_ttl_s=0.8)
        pool = create_pool(settings)
        await pool.open(wait=True)
        try:
            state = FakeListenerState()
            cache = MetadataCache(settings, pool, listener=state)
            await cache.get(pid)
            await cache.get(pid)
            assert cache.stats()["loads"] == 1
            await asyncio.sleep(1.6)  # the TTL safety net
            await cache.get(pid)
            assert cache.stats()["loads"] == 2

            # Listener goes down: an entry loaded before stays fresh for degraded TTL
            # counted from the moment it went down, not from its load.
            state.connected = False
            state.disconnected_since = time.monotonic()
            await cache.get(pid)
            assert cache.stats()["loads"] == 2
            await asyncio.sleep(0.9)
            await cache.get(pid)  # expired: reloaded while disconnected
            assert cache.stats()["loads"] == 3
            await asyncio.sleep(0.2)
            await cache.get(pid)
            assert cache.stats()["loads"] == 3
            await asyncio.sleep(0.7)  # loaded during the outage: degraded TTL from its load
            await cache.get(pid)
            assert cache.stats()["loads"] == 4

            # Back up: the full TTL applies to entries loaded while connected.
            state.connected = True
            state.disconnected_since = None
            cache.invalidate_all()
            await cache.get(pid)
            await asyncio.sleep(0.9)  # past the degraded TTL, within the full one
            await cache.get(pid)
            assert cache.stats()["loads"] == 5
        finally:
            await pool.close()

    run(main())


def test_invalidation_during_a_load_is_not_lost(pg_url: str, make_project: Any, db: Any) -> None:
    project = make_project()
    pid = project["id"]

    async def main() -> None:
        settings = settings_for(pg_url)
        pool = create_pool(settings)
        await pool.open(wait=True)
        try:
            loader = CountingLoader(delay=0.2)
            cache = MetadataCache(settings, pool, loader=loader)
            first = asyncio.create_task(cache.get(pid))
            await asyncio.sleep(0.05)
            cache.invalidate(pid)  # a notification while the load runs
            second = asyncio.create_task(cache.get(pid))  # must not join the old flight
            await asyncio.gather(first, second)
            assert loader.calls == 2
            assert cache.stats()["discarded_loads"] == 1
            assert cache.peek(pid) is second.result()
            cache.invalidate_all()
            assert len(cache) == 0
        finally:
            await pool.close()

    run(main())


# --- triggers --------------------------------------------------------------------------------


def test_registry_triggers_notify_on_commit_only(
    pg_url: str, make_project: Any, listen_conn: Any
) -> None:
    project = make_project()
    pid = project["id"]
    drain(listen_conn)
    with psycopg.connect(pg_url) as conn:  # a plain SQL session, not the CLI
        with conn.transaction():
            for i in range(50):  # one transaction, 50 changes → folded into one notification
                conn.execute(
                    """
                    UPDATE gateway.column_registry c SET is_sensitive = %s
                      FROM gateway.table_registry t
                     WHERE t.id = c.table_id AND t.project_id = %s AND c.name = 'title'
                    """,
                    [i % 2 == 0, pid],
                )
            assert drain(listen_conn, 0.3) == []  # nothing before COMMIT
        assert wait_for_notifications(listen_conn, 1) == [pid]
        assert drain(listen_conn, 0.3) == []

        # A rolled-back change never notifies.
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute(
                "UPDATE gateway.table_registry SET allow_client_write = false "
                "WHERE project_id = %s",
                [pid],
            )
            raise RuntimeError("roll back")
        assert drain(listen_conn, 0.3) == []

    cases = [
        ("UPDATE gateway.table_registry SET realtime = true WHERE project_id = %s", [pid]),
        (
            "DELETE FROM gateway.column_registry c USING gateway.table_registry t "
            "WHERE t.id = c.table_id AND t.project_id = %s AND c.name = 'meta'",
            [pid],
        ),
        ("UPDATE gateway.projects SET rate_limit_per_minute = 7 WHERE id = %s", [pid]),
        ("UPDATE gateway.projects SET status = 'suspended' WHERE id = %s", [pid]),
        (
            "UPDATE gateway.api_keys SET status = 'revoked', revoked_at = now() WHERE id = %s",
            [project["public_key_id"]],
        ),
    ]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement, params in cases:
            conn.execute(statement, params)
            assert wait_for_notifications(listen_conn, 1) == [pid], statement
        # What admission bumps on the hot path must stay silent.
        conn.execute(
            "UPDATE gateway.api_keys SET last_used_at = now() WHERE id = %s",
            [project["server_key_id"]],
        )
        conn.execute("UPDATE gateway.projects SET updated_at = now() WHERE id = %s", [pid])
        assert drain(listen_conn, 0.3) == []
        # Deleting a table (columns cascade) and the project itself.
        conn.execute("DELETE FROM gateway.table_registry WHERE project_id = %s", [pid])
        assert set(wait_for_notifications(listen_conn, 1)) == {pid}
        conn.execute("DELETE FROM gateway.projects WHERE id = %s", [pid])
        assert set(wait_for_notifications(listen_conn, 1)) == {pid}


def test_ddl_event_trigger_notifies_for_project_schemas(
    pg_url: str, make_project: Any, listen_conn: Any, db: Any
) -> None:
    installed = db.execute(
        "SELECT count(*) AS n FROM pg_event_trigger WHERE evtname LIKE 'gateway_metadata_%%'"
    ).fetchone()["n"]
    if installed != 2:
        pytest.skip("the test database's role may not create event triggers")
    project = make_project()
    pid, schema = project["id"], project["schema_name"]
    drain(listen_conn)
    with psycopg.connect(pg_url) as conn, conn.transaction():
        conn.execute(f"SET LOCAL ROLE {schema}")
        conn.execute(f"ALTER TABLE {schema}.todos ADD COLUMN extra text")
        conn.execute(f"CREATE INDEX ON {schema}.todos (extra)")
        assert drain(listen_conn, 0.2) == []
    assert wait_for_notifications(listen_conn, 1) == [pid]
    db.execute(f"ALTER TABLE {schema}.todos DROP COLUMN extra")
    assert wait_for_notifications(listen_conn, 1) == [pid]
    db.execute(f"CREATE TABLE {schema}.scratch (id int)")
    assert wait_for_notifications(listen_conn, 1) == [pid]
    db.execute(f"DROP TABLE {schema}.scratch")  # sql_drop
    assert wait_for_notifications(listen_conn, 1) == [pid]
    # DDL elsewhere: silent.
    name = f"public.unrelated_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE TABLE {name} (id int)")
    db.execute(f"DROP TABLE {name}")
    assert drain(listen_conn, 0.3) == []


def test_migration_without_event_trigger_privilege_skips_and_says_why(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    role = f"mig_{uuid.uuid4().hex[:8]}"
    dbname = f"db_{role}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER CREATEROLE")
        admin.execute(f"CREATE DATABASE {dbname} OWNER {role}")
    params = psycopg.conninfo.conninfo_to_dict(pg_url)
    host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
    url = f"postgresql://{role}@{host}:{port}/{dbname}"
    try:
        with caplog.at_level(logging.INFO, logger="alembic"):
            migrate.upgrade(url)
        assert "skipped the DDL event triggers" in caplog.text
        assert role in caplog.text
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pg_event_trigger").fetchone() == (0,)
            # the row triggers are there regardless
            triggers = conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'gateway_metadata_notify%'"
            ).fetchone()
            assert triggers is not None and triggers[0] == 6
        migrate.downgrade(url, "base")
        migrate.upgrade(url)
        migrate.downgrade(url, "base")
        with psycopg.connect(url, autocommit=True) as conn:
            functions = conn.execute(
                "SELECT count(*) FROM pg_proc WHERE proname LIKE 'notify_metadata_%'"
            ).fetchone()
            assert functions == (0,)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {role}")


# --- the listener ----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.projects: list[str] = []
        self.alls = 0

    def on_project(self, project_id: str) -> None:
        self.projects.append(project_id)

    def on_all(self) -> None:
        self.alls += 1


def terminate(pg_url: str, pid: int) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()
        assert row == (True,)


def test_listener_delivers_and_reconnects_after_terminate(pg_url: str, make_project: Any) -> None:
    project = make_project()
    pid = project["id"]

    async def main() -> None:
        settings = settings_for(pg_url)
        rec = Recorder()
        listener = MetadataListener(settings, rec.on_project, rec.on_all)
        await listener.start()
        try:
            assert await listener.wait_connected(10)
            assert rec.alls == 1  # the first connect flushes too
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                # The connection is the dedicated one: right name, listening.
                row = await (
                    await conn.execute(
                        "SELECT application_name, query FROM pg_stat_activity WHERE pid = %s",
                        [listener.backend_pid],
                    )
                ).fetchone()
                assert row is not None and row[0] == settings.application_name
                assert row[1].startswith("LISTEN")
                await conn.execute(
                    "UPDATE gateway.projects SET rate_limit_per_minute = 11 WHERE id = %s", [pid]
                )
                took = await until(lambda: pid in rec.projects, 5, "the notification")
                print(f"notification → callback: {took * 1000:.1f} ms")
                await conn.execute("SELECT pg_notify('gateway_metadata', '*')")
                await until(lambda: rec.alls == 2, 5, "the '*' flush")

                old_pid = listener.backend_pid
                assert old_pid is not None
                terminate(pg_url, old_pid)
                took = await until(
                    lambda: listener.reconnects == 1 and listener.connected, 10, "reconnect"
                )
                print(f"terminated → reconnected: {took * 1000:.1f} ms")
                assert listener.backend_pid != old_pid
                assert rec.alls == 3  # full flush after the reconnect
                assert listener.last_error is not None
                rec.projects.clear()
                await conn.execute(
                    "UPDATE gateway.projects SET rate_limit_per_minute = 12 WHERE id = %s", [pid]
                )
                await until(lambda: pid in rec.projects, 5, "a notification after reconnect")
        finally:
            await listener.stop()
        assert not listener.connected

    run(main())


def test_listener_backs_off_while_the_server_refuses(pg_url: str) -> None:
    async def main() -> None:
        # Nothing listens on this port: every attempt fails fast, the delay grows to 2 s.
        from gateway.db.localdb import free_port

        dead = make_conninfo(pg_url, port=str(free_port()))
        listener = MetadataListener(settings_for(dead, database_direct_url=dead), None, None)
        started = time.monotonic()
        await listener.start()
        await asyncio.sleep(4.0)
        await listener.stop()
        elapsed = time.monotonic() - started
        assert not listener.connected and listener.last_error
        print(f"{listener.attempts} attempts in {elapsed:.1f} s; last: {listener.last_error}")
        # 0 + 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2 … : about 6 in 4 s (not 40)
        assert 3 <= listener.attempts <= 10
        assert listener.connects == 0 and listener.reconnects == 0

    run(main())


def test_self_check_replaces_a_connection_whose_listen_was_dropped(
    pg_url: str, make_project: Any
) -> None:
    """The session stays up but no longer listens: only the self-check can notice."""
    project = make_project()
    pid = project["id"]

    async def main() -> None:
        settings = settings_for(pg_url, listener_ping_s=0.5)
        rec = Recorder()
        listener = MetadataListener(settings, rec.on_project, rec.on_all, ping_timeout_s=1.0)
        await listener.start()
        try:
            assert await listener.wait_connected(10)
            await until(lambda: listener.pings_received >= 1, 10, "a first ping")
            old_pid = listener.backend_pid
            await listener.execute_on_connection("UNLISTEN *")
            started = time.monotonic()
            await until(lambda: listener.reconnects >= 1 and listener.connected, 15, "replacement")
            print(f"dropped LISTEN detected and replaced in {time.monotonic() - started:.2f} s")
            assert listener.backend_pid != old_pid
            assert "self-check" in (listener.last_error or "")
            assert rec.alls >= 2
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                await conn.execute(
                    "UPDATE gateway.projects SET rate_limit_per_minute = 13 WHERE id = %s", [pid]
                )
            await until(lambda: pid in rec.projects, 5, "delivery on the new connection")
        finally:
            await listener.stop()

    run(main())


def test_self_check_replaces_a_half_open_connection(pg_url: str, make_project: Any) -> None:
    """A proxy stops forwarding without closing: writes succeed, nothing comes back."""
    project = make_project()
    pid = project["id"]
    params = psycopg.conninfo.conninfo_to_dict(pg_url)

    async def main() -> None:
        proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
        await proxy.start()
        via_proxy = make_conninfo(pg_url, host="127.0.0.1", port=str(proxy.port))
        settings = settings_for(pg_url, database_direct_url=via_proxy, listener_ping_s=0.5)
        rec = Recorder()
        listener = MetadataListener(settings, rec.on_project, rec.on_all, ping_timeout_s=1.0)
        await listener.start()
        try:
            assert await listener.wait_connected(10)
            old_pid = listener.backend_pid
            assert proxy.blackhole() == 1
            started = time.monotonic()
            await until(lambda: listener.reconnects >= 1 and listener.connected, 15, "replacement")
            print(f"half-open connection replaced in {time.monotonic() - started:.2f} s")
            assert listener.backend_pid != old_pid
            assert rec.alls >= 2
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                await conn.execute(
                    "UPDATE gateway.projects SET rate_limit_per_minute = 14 WHERE id = %s", [pid]
                )
            await until(lambda: pid in rec.projects, 5, "delivery on the new connection")
        finally:
            await listener.stop()
            await proxy.close()

    run(main())


def test_burst_of_50_changes_causes_bounded_reloads(pg_url: str, make_project: Any) -> None:
    project = make_project()
    pid = project["id"]
    other = make_project()["id"]

    async def main() -> None:
        settings = settings_for(pg_url)
        pool = create_pool(settings)
        await pool.open(wait=True)
        cache = MetadataCache(settings, pool)
        listener = MetadataListener(settings, cache.invalidate, cache.invalidate_all)
        cache.attach_listener(listener)
        await listener.start()
        stop = asyncio.Event()

        async def reader() -> None:  # a client asking all the time
            while not stop.is_set():
                await cache.get(pid)
                await cache.get(other)
                await asyncio.sleep(0.002)

        try:
            assert await listener.wait_connected(10)
            await cache.get(pid)
            task = asyncio.create_task(reader())
            loads_before = cache.stats()["loads"]
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                started = time.monotonic()
                for i in range(50):  # 50 separate commits, as fast as possible
                    await conn.execute(
                        "UPDATE gateway.projects SET rate_limit_per_minute = %s WHERE id = %s",
                        [1000 + i, pid],
                    )
                burst_s = time.monotonic() - started
            await until(lambda: listener.notifications >= 50, 10, "50 notifications")
            await asyncio.sleep(0.5)  # the last window closes
            stop.set()
            await task
            loads = cache.stats()["loads"] - loads_before
            windows = listener.project_invalidations
            bound = 2 + int(burst_s / listener.debounce_s) + 1
            print(
                f"50 commits in {burst_s * 1000:.0f} ms → {listener.notifications} notifications, "
                f"{windows} invalidations, {loads} reloads (bound {bound})"
            )
            assert listener.notifications == 50
            assert windows <= bound
            assert loads <= windows + 1  # the other project's single load at most
            assert cache.peek(pid) is not None or loads >= 1
        finally:
            stop.set()
            await listener.stop()
            await pool.close()

    run(main())
