"""The router against a real directory (control database + one cell database): the one
lookup a miss costs, home for keys the directory doesn't know, and the directory's own
NOTIFY payloads invalidating the cache (a key created later, a project re-placed)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.auth.keys import hash_key
from gateway.cells import directory
from gateway.cells.router import HOME, CellRouter
from tests.support.cells import make_cell_project, register_cell, remove_cell, unique_cell_name

CHANNEL = "gateway_directory"


def change_directory(
    pg_url: str,
    listener: psycopg.Connection[Any],
    router: CellRouter,
    change: Callable[[psycopg.Connection[Any]], None],
) -> list[str]:
    """Commit ``change`` on the control database and hand the router the notifications it
    caused, as home's listener does (waits at most 5 s for them); returns their payloads."""
    with psycopg.connect(pg_url) as control:
        change(control)
        control.commit()
    payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    for payload in payloads:
        router.on_notify(payload)
    return payloads


def test_keys_route_to_their_cell_and_notifications_keep_the_cache_right(
    pg_url: str, cell_databases: Any, make_project: Any
) -> None:
    (cell_url,) = cell_databases(1)
    name = unique_cell_name()
    register_cell(pg_url, name, cell_url)
    try:
        placed = make_cell_project(pg_url, name, cell_url)
        home_project = make_project()
        with psycopg.connect(pg_url, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            asyncio.run(scenario(pg_url, name, placed, home_project, listener))
    finally:
        remove_cell(pg_url, name)


async def scenario(
    pg_url: str,
    cell: str,
    placed: dict[str, Any],
    home_project: dict[str, Any],
    listener: psycopg.Connection[Any],
) -> None:
    async with AsyncConnectionPool(pg_url, min_size=1, max_size=2, open=False) as pool:
        await pool.open(wait=True)
        router = CellRouter(pool)

        server_hash = hash_key(placed["server_key"])
        assert await router.cell_of(server_hash) == cell
        assert await router.cell_of(hash_key(placed["public_key"])) == cell
        assert await router.cell_of(hash_key(home_project["server_key"])) == HOME
        assert await router.cell_of(hash_key("not-a-key")) == HOME
        assert router.lookups == 4
        assert await router.cell_of(server_hash) == cell  # warm: no lookup
        assert router.lookups == 4

        # a key made for the placed project after its first request: cached as home
        # until the directory's NOTIFY names it
        new_hash = hash_key("gw_" + secrets.token_hex(16))
        assert await router.cell_of(new_hash) == HOME
        notified = change_directory(
            pg_url, listener, router, lambda c: directory.register_key(c, placed["id"], new_hash)
        )
        assert f"key:{new_hash}" in notified
        assert await router.cell_of(new_hash) == cell

        # the project leaves the directory (as a move back home would end): every one of
        # its hashes is dropped by the one 'project:<uuid>' payload
        notified = change_directory(
            pg_url, listener, router, lambda c: directory.unregister_project(c, placed["id"])
        )
        assert f"project:{placed['id']}" in notified
        assert await router.cell_of(server_hash) == HOME
        assert await router.cell_of(new_hash) == HOME
