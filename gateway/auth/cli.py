"""``gateway auth users|logout|force-reset|import``: registered by ``gateway.cli``.

Same conventions as every command: ``--json`` prints one JSON object; refused input is one
line on stderr and exit status 2 (``AuthAdminError`` is a ``ProvisioningError``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gateway.auth import admin
from gateway.control.commands.common import CommandLine, emit


def _page_number(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= 2**31 - 1:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}")
        return int(text)

    return parse


def cmd_users(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect_project(args.project) as conn:
        result = admin.list_users(conn, args.project, limit=args.limit, offset=args.offset)
    lines = [
        f"{u['id']}  {u['email']}  {u['provider']}  verified={u['emailVerified']}  "
        f"sessions={u['activeSessions']}  last_sign_in={u['lastSignIn']}"
        for u in result["users"]
    ]
    emit(args, result, "\n".join(lines) if lines else f"no users in {result['project']}")


def cmd_logout(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect_project(args.project) as conn:
        result = admin.logout(conn, args.project, args.user_id)
    emit(args, result, f"revoked {result['revokedSessions']} session(s) of {result['email']}")


def cmd_force_reset(cli: CommandLine, args: argparse.Namespace) -> None:
    with cli.connect_project(args.project) as conn:
        result = admin.force_reset(conn, args.project, args.user_id)
    emit(
        args,
        result,
        f"cleared the password of {result['email']} and revoked "
        f"{result['revokedSessions']} session(s)",
    )


def cmd_import(cli: CommandLine, args: argparse.Namespace) -> None:
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise admin.AuthAdminError(f"can't read {args.file}: {type(exc).__name__}") from None
    with cli.connect_project(args.project) as conn:
        result = admin.import_users(conn, args.project, text.splitlines())
    emit(
        args,
        result,
        f"imported {result['imported']} user(s) into {result['project']}, "
        f"skipped {result['skipped']} already there",
    )


def register(cli: CommandLine) -> None:
    group = cli.group("auth", "end users of a project's app")
    p = cli.command(group, "users", cmd_users, "list a project's end users, oldest first")
    p.add_argument("project")
    p.add_argument("--limit", type=_page_number(1), default=None, help="at most N (default all)")
    p.add_argument("--offset", type=_page_number(0), default=0)
    p = cli.command(
        group, "logout", cmd_logout, "revoke every session of a user, on every instance"
    )
    p.add_argument("project")
    p.add_argument("user_id")
    p = cli.command(
        group, "force-reset", cmd_force_reset, "clear a user's password and revoke their sessions"
    )
    p.add_argument("project")
    p.add_argument("user_id")
    p = cli.command(
        group, "import", cmd_import, "import users exported from the original (JSON lines)"
    )
    p.add_argument("project")
    p.add_argument("--file", required=True, help="one JSON object per line")
