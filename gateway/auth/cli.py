"""``gateway auth users|logout|force-reset|import``: registered by ``gateway.cli``.

Same conventions as every command: ``--json`` prints one JSON object; refused input is one
line on stderr and exit status 2 (``AuthAdminError`` is a ``ProvisioningError``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.auth import admin

Emit = Callable[[argparse.Namespace, dict[str, Any], str], None]


def register(
    sub: Any,
    command: Callable[..., argparse.ArgumentParser],
    *,
    connect: Callable[[], Any],
    emit: Emit,
    parser_class: type[argparse.ArgumentParser],
) -> None:
    group = sub.add_parser("auth", help="end users of a project's app").add_subparsers(
        dest="action", required=True, parser_class=parser_class
    )

    def users(args: argparse.Namespace) -> None:
        with connect() as conn:
            result = admin.list_users(conn, args.project)
        lines = [
            f"{u['id']}  {u['email']}  {u['provider']}  verified={u['emailVerified']}  "
            f"sessions={u['activeSessions']}  last_sign_in={u['lastSignIn']}"
            for u in result["users"]
        ]
        emit(args, result, "\n".join(lines) if lines else f"no users in {result['project']}")

    def logout(args: argparse.Namespace) -> None:
        with connect() as conn:
            result = admin.logout(conn, args.project, args.user_id)
        emit(args, result, f"revoked {result['revokedSessions']} session(s) of {result['email']}")

    def force_reset(args: argparse.Namespace) -> None:
        with connect() as conn:
            result = admin.force_reset(conn, args.project, args.user_id)
        emit(
            args,
            result,
            f"cleared the password of {result['email']} and revoked "
            f"{result['revokedSessions']} session(s)",
        )

    def import_(args: argparse.Namespace) -> None:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise admin.AuthAdminError(f"can't read {args.file}: {type(exc).__name__}") from None
        with connect() as conn:
            result = admin.import_users(conn, args.project, text.splitlines())
        emit(
            args,
            result,
            f"imported {result['imported']} user(s) into {result['project']}, "
            f"skipped {result['skipped']} already there",
        )

    p = command(group, "users", users, "list a project's end users")
    p.add_argument("project")
    p = command(group, "logout", logout, "revoke every session of a user, on every instance")
    p.add_argument("project")
    p.add_argument("user_id")
    p = command(
        group, "force-reset", force_reset, "clear a user's password and revoke their sessions"
    )
    p.add_argument("project")
    p.add_argument("user_id")
    p = command(group, "import", import_, "import users exported from the original (JSON lines)")
    p.add_argument("project")
    p.add_argument("--file", required=True, help="one JSON object per line")
