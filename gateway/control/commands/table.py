"""``gateway table create|realtime|add-column|set-access|drop``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.control import realtime_capture, table_changes, tables
from gateway.control.commands.common import CommandLine, UsageError, boolean, emit


def cmd_create(cli: CommandLine, args: argparse.Namespace) -> None:
    try:
        raw = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise UsageError(f"can't read {args.file}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{args.file} is not valid JSON: {exc}") from None
    with cli.connect_project(args.project) as conn:
        result = tables.create_table_from_definition(conn, args.project, raw)
    emit(args, result, f"created table {result['table']} in {result['schema_name']}")


def cmd_realtime(cli: CommandLine, args: argparse.Namespace) -> None:
    if args.enable == args.disable:
        raise UsageError("give exactly one of --enable or --disable")
    with cli.connect_project(args.project) as conn:
        result = realtime_capture.set_realtime(conn, args.project, args.table, enabled=args.enable)
    state = "enabled" if result["realtime"] else "disabled"
    emit(args, result, f"realtime {state} for {result['table']}")


def _default_value(raw: str | None) -> tuple[bool, Any]:
    """``--default``: a JSON literal, or now() / gen_random_uuid()."""
    if raw is None:
        return False, None
    if raw.strip().lower() in ("now()", "gen_random_uuid()"):
        return True, raw.strip().lower()
    try:
        return True, json.loads(raw)
    except ValueError:
        raise UsageError(
            f"--default {raw!r} is not a JSON literal (strings need quotes: '\"text\"'), "
            "now() or gen_random_uuid()"
        ) from None


def cmd_add_column(cli: CommandLine, args: argparse.Namespace) -> None:
    has_default, default = _default_value(args.default)
    raw: dict[str, Any] = {
        "name": args.name,
        "type": args.type,
        "nullable": args.nullable,
        "sensitive": args.sensitive,
        "client_read": args.client_read,
        "client_write": args.client_write,
    }
    if has_default:
        raw["default"] = default
    with cli.connect_project(args.project) as conn:
        result = table_changes.add_column_from_definition(conn, args.project, args.table, raw)
    column = result["column"]
    emit(
        args,
        result,
        f"added column {column['name']} {column['type']} to {args.table} "
        f"in {result['schema_name']}",
    )


def cmd_set_access(cli: CommandLine, args: argparse.Namespace) -> None:
    rows = args.row_access is not None or args.owner_column is not None
    flags_given = (args.client_read, args.client_write, args.sensitive) != (None, None, None)
    if rows:
        # rows that belong to users (docs/auth.md)
        if args.column is not None:
            raise UsageError("--row-access and --owner-column are table settings: no --column")
        with cli.connect_project(args.project) as conn:
            result = table_changes.set_row_access(
                conn,
                args.project,
                args.table,
                row_access=args.row_access,
                owner_column=args.owner_column,
            )
        if not flags_given:
            message = f"{args.table}: row_access={result['row_access']}"
            emit(args, result, message + f", owner_column={result['owner_column']}")
            return
    with cli.connect_project(args.project) as conn:
        result = table_changes.set_access(
            conn,
            args.project,
            args.table,
            column=args.column,
            client_read=args.client_read,
            client_write=args.client_write,
            sensitive=args.sensitive,
        )
    target = args.table if args.column is None else f"{args.table}.{args.column}"
    flags = ", ".join(f"{k}={str(v).lower()}" for k, v in result.items() if isinstance(v, bool))
    emit(args, result, f"{target}: {flags}")


def cmd_drop(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect_project(args.project) as conn:
        result = tables.drop_table(conn, args.project, args.table)
    emit(args, result, f"dropped table {args.table} from {result['schema_name']}")


def register(cli: CommandLine) -> None:
    group = cli.group("table", "project tables")
    p = cli.command(group, "create", cmd_create, "create a table from a JSON definition")
    p.add_argument("project")
    p.add_argument("--file", required=True)
    p = cli.command(
        group,
        "realtime",
        cmd_realtime,
        "turn realtime capture (the change-log trigger) on or off for a table",
    )
    p.add_argument("project")
    p.add_argument("table")
    p.add_argument("--enable", action="store_true")
    p.add_argument("--disable", action="store_true")

    p = cli.command(group, "add-column", cmd_add_column, "add a column to a table")
    p.add_argument("project")
    p.add_argument("table")
    p.add_argument("--name", required=True)
    p.add_argument("--type", required=True)
    p.add_argument("--nullable", action="store_true", help="allow NULL (default: NOT NULL)")
    p.add_argument("--default", help="a JSON literal, now() or gen_random_uuid()")
    p.add_argument("--sensitive", action="store_true", help="never shown to public keys")
    p.add_argument("--client-read", type=boolean, default=True, metavar="true|false")
    p.add_argument("--client-write", type=boolean, default=True, metavar="true|false")

    p = cli.command(
        group, "set-access", cmd_set_access, "change a table's or a column's access flags"
    )
    p.add_argument("project")
    p.add_argument("table")
    p.add_argument("--column", help="change this column's flags instead of the table's")
    p.add_argument("--client-read", type=boolean, metavar="true|false")
    p.add_argument("--client-write", type=boolean, metavar="true|false")
    p.add_argument("--sensitive", type=boolean, metavar="true|false", help="needs --column")
    p.add_argument(
        "--row-access",
        choices=("all", "owner", "public_read"),
        help="what public keys may do with rows: all, only their session user's (owner), "
        "or read all and write their own (public_read)",
    )
    p.add_argument("--owner-column", help="the uuid column holding a row's user id")

    p = cli.command(group, "drop", cmd_drop, "drop a table and unregister it")
    p.add_argument("project")
    p.add_argument("table")
