"""gateway.db.wire against a real PostgreSQL: prepared names, the implicit transaction."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
import weakref
from collections.abc import Awaitable
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg.pq import ExecStatus, TransactionStatus

from gateway.db import wire

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _names(conn: AsyncConnection[Any]) -> set[str]:
    cur = await conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'gw\\_%'", prepare=False
    )
    return {row[0] for row in await cur.fetchall()}


async def _exchange(conn: AsyncConnection[Any], *queries: tuple[str, list[Any]]) -> list[Any]:
    state = wire.state_of(conn)
    return await wire.exchange(conn, [state.bind(q, p) for q, p in queries])


@pytest.fixture
def table(pg_url: str) -> str:
    name = f"wire_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    return name


def test_a_name_is_registered_only_when_its_parse_ran(pg_url: str, table: str) -> None:
    """Statement 1 fails, so the server skips statement 2's Parse: its name must not be
    taken as prepared, or its next use would fail with 26000."""

    async def scenario() -> None:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            fail = (f"INSERT INTO {table} VALUES (%s), (%s)", [1, 1])  # duplicate key
            second = (f"SELECT count(*) FROM {table} WHERE id > %s", [0])
            results = await _exchange(conn, fail, second)
            assert [r.status for r in results] == [
                ExecStatus.FATAL_ERROR,
                ExecStatus.PIPELINE_ABORTED,
            ]
            assert conn.info.transaction_status == TransactionStatus.IDLE
            state = wire.state_of(conn)
            # the INSERT's Parse ran (its Execute failed); the SELECT's was skipped
            assert list(state.names) == [wire.statement_name(state.bind(*fail))]
            assert await _names(conn) == {n.decode() for n in state.names}
            [res] = await _exchange(conn, second)
            assert res.status == ExecStatus.TUPLES_OK and res.get_value(0, 0) == b"0"
            [res] = await _exchange(conn, second)  # now prepared: Bind/Execute only
            assert res.status == ExecStatus.TUPLES_OK
            assert len(await _names(conn)) == len(state.names) >= 1

    run(scenario())


def test_a_statement_repeated_in_one_pipeline_is_parsed_once(pg_url: str) -> None:
    async def scenario() -> None:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            query = ("SELECT %s::int * 2", [21])
            results = await _exchange(conn, query, query, query)
            assert [r.get_value(0, 0) for r in results] == [b"42"] * 3
            assert len(wire.state_of(conn).names) == 1

    run(scenario())


def test_statement_k_failing_rolls_back_the_earlier_writes(pg_url: str, table: str) -> None:
    async def scenario() -> None:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            results = await _exchange(
                conn,
                (f"INSERT INTO {table} VALUES (%s) RETURNING id", [1]),
                (f"INSERT INTO {table} VALUES (%s) RETURNING id", [1]),
            )
            assert results[0].status == ExecStatus.TUPLES_OK
            assert results[1].status == ExecStatus.FATAL_ERROR
            assert conn.info.transaction_status == TransactionStatus.IDLE
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            assert await cur.fetchone() == (0,)

    run(scenario())


def test_set_local_lasts_to_the_sync_and_no_further(pg_url: str) -> None:
    async def scenario() -> None:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            results = await _exchange(
                conn,
                ("SELECT set_config('gateway.user_id', %s, true)", ["u1"]),
                ("SELECT current_setting('gateway.user_id', true)", []),
            )
            assert results[1].get_value(0, 0) == b"u1"
            [res] = await _exchange(conn, ("SELECT current_setting('gateway.user_id', true)", []))
            assert res.get_value(0, 0) in (None, b"")

    run(scenario())


def test_a_deferred_constraint_failing_at_the_sync_is_reported(pg_url: str) -> None:
    """Every statement succeeded; the commit at the Sync failed: one more error result."""
    name = f"wire_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {name} (id int PRIMARY KEY,"
            f" parent int REFERENCES {name} DEFERRABLE INITIALLY DEFERRED)"
        )

    async def scenario() -> None:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            results = await _exchange(conn, (f"INSERT INTO {name} VALUES (%s, %s)", [1, 99]))
            assert results[0].status == ExecStatus.COMMAND_OK
            assert [r.status for r in results[1:]] == [ExecStatus.FATAL_ERROR]
            assert conn.info.transaction_status == TransactionStatus.IDLE
            cur = await conn.execute(f"SELECT count(*) FROM {name}")
            assert await cur.fetchone() == (0,)

    run(scenario())


def test_names_lost_on_the_server_are_prepared_again(pg_url: str) -> None:
    """DISCARD ALL (or a pooler's other backend) drops our names: 26000, then one rerun."""

    async def scenario() -> None:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            query = ("SELECT %s::int + 1", [1])
            await _exchange(conn, query)
            assert wire.state_of(conn).names
            await conn.execute("DEALLOCATE ALL")
            [res] = await _exchange(conn, query)
            assert res.status == ExecStatus.TUPLES_OK and res.get_value(0, 0) == b"2"
            assert len(await _names(conn)) == 1

    run(scenario())


def test_a_name_prepared_behind_our_back_is_adopted(pg_url: str) -> None:
    """A unit cancelled after its Parse ran never read the answer: the next Parse of that
    name fails with 42P05; the wire registers the name and runs the unit again."""

    async def scenario() -> None:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            state = wire.state_of(conn)
            bound = state.bind("SELECT %s::text || 'x'", ["a"])
            name = wire.statement_name(bound).decode()
            assert not any(bound.types or ())  # a str goes as "unknown": no signature
            await conn.execute(f"PREPARE {name} AS SELECT $1::text || 'x'")
            [res] = await wire.exchange(conn, [bound])
            assert res.status == ExecStatus.TUPLES_OK, res.error_message
            assert res.get_value(0, 0) == b"ax"
            assert list(state.names) == [name.encode()]

    run(scenario())


def test_prepared_names_per_connection_are_bounded(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "PREPARED_PER_CONNECTION", 3)

    async def scenario() -> None:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            for i in range(8):
                [res] = await _exchange(conn, (f"SELECT {i} + %s::int", [1]))
                assert res.get_value(0, 0) == str(i + 1).encode()
                assert len(wire.state_of(conn).names) <= 3
            # the names evicted last are closed at the head of the next pipeline
            state = wire.state_of(conn)
            assert len(await _names(conn)) == 3 + len(state.closing)
            await _exchange(conn, ("SELECT 7 + %s::int", [1]))  # still prepared
            assert await _names(conn) == {n.decode() for n in state.names}
            assert len(state.names) == 3

    run(scenario())


def test_behind_a_transaction_pooler_nothing_is_prepared(pg_url: str) -> None:
    async def scenario() -> None:
        async with await AsyncConnection.connect(
            pg_url, autocommit=True, prepare_threshold=None
        ) as conn:
            for _ in range(3):
                [res] = await _exchange(conn, ("SELECT %s::int", [7]))
                assert res.get_value(0, 0) == b"7"
            assert await _names(conn) == set()
            assert not wire.state_of(conn).names

    run(scenario())


def test_a_closed_connection_raises_operational_error(pg_url: str) -> None:
    async def scenario() -> None:
        conn = await AsyncConnection.connect(pg_url, autocommit=True)
        await conn.close()
        with pytest.raises(psycopg.OperationalError):
            await _exchange(conn, ("SELECT 1", []))

    run(scenario())


def test_a_connection_with_wire_state_can_be_collected(pg_url: str) -> None:
    """The state refers to its connection (through psycopg's Transformer): kept on the
    connection itself, the pair is a cycle the collector frees, not a leak per connection."""

    async def scenario() -> weakref.ref[AsyncConnection[Any]]:
        conn = await AsyncConnection.connect(pg_url, autocommit=True)
        await _exchange(conn, ("SELECT %s::int", [1]))
        ref = weakref.ref(conn)
        await conn.close()
        return ref

    ref = run(scenario())
    gc.collect()
    assert ref() is None


def test_a_timeout_cancels_the_unit_and_keeps_the_connection(pg_url: str, table: str) -> None:
    """Past ``timeout`` the unit is cancelled on the server and its answers read: the
    caller gets ``wire.Timeout`` at the deadline, nothing of the unit is committed, and
    the connection serves the next unit."""

    async def scenario() -> float:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            state = wire.state_of(conn)
            unit = [
                state.bind(f"INSERT INTO {table} (id) VALUES (%s) RETURNING id", [1]),
                state.bind("SELECT pg_sleep(5)", []),
            ]
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(wire.Timeout):
                await wire.exchange(conn, unit, timeout=0.2)
            took = loop.time() - started
            assert not conn.closed
            assert conn.info.transaction_status == TransactionStatus.IDLE
            [res] = await _exchange(conn, (f"SELECT count(*) FROM {table}", []))
            assert res.get_value(0, 0) == b"0"  # the insert was rolled back with the unit
            return took

    took = run(scenario())
    assert took < 0.2 + 2 * wire.CANCEL_GRACE_S


def test_a_timeout_against_a_silent_server_closes_the_connection(pg_url: str) -> None:
    """A server that answers neither the unit nor the cancel request (a network that
    stopped forwarding) costs the deadline plus the grace, then the connection is closed:
    never a hang."""

    async def scenario() -> float:
        info = psycopg.conninfo.conninfo_to_dict(pg_url)
        forwarding = asyncio.Event()
        forwarding.set()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if forwarding.is_set():
                        writer.write(data)
                        await writer.drain()
            writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", int(info.get("port", 5432))
            )
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            url = psycopg.conninfo.make_conninfo(pg_url, host="127.0.0.1", port=port)
            conn = await AsyncConnection.connect(url, autocommit=True)
            await _exchange(conn, ("SELECT 1", []))
            forwarding.clear()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(wire.Timeout):
                await _exchange_with_timeout(conn, 0.2)
            took = loop.time() - started
            assert conn.closed
            return took
        finally:
            server.close()

    took = run(scenario())
    assert took < 0.2 + 2 * wire.CANCEL_GRACE_S + 0.5


async def _exchange_with_timeout(conn: AsyncConnection[Any], timeout: float) -> list[Any]:
    state = wire.state_of(conn)
    return await wire.exchange(conn, [state.bind("SELECT 1", [])], timeout=timeout)
