"""``gateway key create|revoke|list|regenerate``."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.auth.keys import hash_key
from gateway.cells import directory
from gateway.control import keys
from gateway.control.commands.common import CommandLine, emit, non_negative_int
from gateway.control.errors import NotFoundError


def cmd_create(cli: CommandLine, args: argparse.Namespace) -> None:
    scopes = [s.strip() for s in args.scopes.split(",")] if args.scopes else None
    with cli.connect_project(args.project) as conn:
        key = keys.create_key(
            conn, args.project, key_type=args.type, scopes=scopes, expires_in_s=args.expires_in
        )
    _route_key(cli, args.project, key)
    emit(args, key, f"{key['type']} key {key['id']}: {key['key']}")


def _route_key(cli: CommandLine, project: str, key: dict[str, Any]) -> None:
    """A new key of a project off home: its hash goes to the directory, so every
    instance routes it to the project's cell at once (NOTIFY)."""
    with cli.connect() as control:
        placement = directory.locate(control, project)
        if placement.cell != directory.HOME:
            directory.register_key(control, placement.project_id, hash_key(key["key"]))
            control.commit()


def _on_the_keys_cell(cli: CommandLine, key_id: str, action: Any) -> tuple[str, dict[str, Any]]:
    """``(cell, action(conn))`` in the cell that holds the key (home first)."""
    for cell, conn in cli.each_cell():
        try:
            return cell.name, action(conn)
        except NotFoundError:
            continue
    raise NotFoundError(f"no key with id {key_id}")


def cmd_revoke(cli: CommandLine, args: argparse.Namespace) -> None:
    _, result = _on_the_keys_cell(cli, args.key_id, lambda c: keys.revoke_key(c, args.key_id))
    emit(args, result, f"key {result['id']} revoked")


def cmd_list(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect_project(args.project) as conn:
        result = keys.list_keys(conn, args.project)
    lines = [f"{k['id']}\t{k['prefix']}…\t{k['type']}\t{k['status']}" for k in result["keys"]]
    emit(args, result, "\n".join(lines) or "no keys")


def cmd_regenerate(cli: CommandLine, args: argparse.Namespace) -> None:
    cell, key = _on_the_keys_cell(cli, args.key_id, lambda c: keys.regenerate_key(c, args.key_id))
    if cell != directory.HOME:
        with cli.connect() as control:
            directory.register_key(control, key["project_id"], hash_key(key["key"]))
            control.commit()
    emit(args, key, f"{key['type']} key {key['id']} replaces {key['replaces']}: {key['key']}")


def register(cli: CommandLine) -> None:
    group = cli.group("key", "API keys")
    p = cli.command(group, "create", cmd_create, "create an API key")
    p.add_argument("project")
    p.add_argument("--type", required=True, choices=("public", "server"))
    p.add_argument("--scopes")
    p.add_argument("--expires-in", type=non_negative_int, metavar="SECONDS")
    p = cli.command(group, "revoke", cmd_revoke, "revoke an API key")
    p.add_argument("key_id")
    p = cli.command(group, "list", cmd_list, "list a project's keys (never the secrets)")
    p.add_argument("project")
    p = cli.command(group, "regenerate", cmd_regenerate, "revoke a key and issue its replacement")
    p.add_argument("key_id")
