"""``gateway key create|revoke|list|regenerate``."""

from __future__ import annotations

import argparse

from gateway.control import keys
from gateway.control.commands.common import CommandLine, emit, non_negative_int


def cmd_create(cli: CommandLine, args: argparse.Namespace) -> None:
    scopes = [s.strip() for s in args.scopes.split(",")] if args.scopes else None
    with cli.connect() as conn:
        key = keys.create_key(
            conn, args.project, key_type=args.type, scopes=scopes, expires_in_s=args.expires_in
        )
    emit(args, key, f"{key['type']} key {key['id']}: {key['key']}")


def cmd_revoke(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect() as conn:
        result = keys.revoke_key(conn, args.key_id)
    emit(args, result, f"key {result['id']} revoked")


def cmd_list(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect() as conn:
        result = keys.list_keys(conn, args.project)
    lines = [f"{k['id']}\t{k['prefix']}…\t{k['type']}\t{k['status']}" for k in result["keys"]]
    emit(args, result, "\n".join(lines) or "no keys")


def cmd_regenerate(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect() as conn:
        key = keys.regenerate_key(conn, args.key_id)
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
