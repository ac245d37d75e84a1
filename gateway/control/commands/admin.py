"""``gateway admin sign``: the headers that sign one admin API request (docs/control.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.control import signing
from gateway.control.commands.common import CommandLine, UsageError, emit
from gateway.settings import Settings


def cmd_sign(cli: CommandLine, args: argparse.Namespace) -> None:
    """Headers for one signed admin request; the body must be sent byte for byte."""
    settings = Settings.from_env()
    if not settings.admin_hmac_secrets:
        raise UsageError("GATEWAY_ADMIN_HMAC_SECRET is not set: it holds the signing secret")
    if args.body is not None and args.body_file is not None:
        raise UsageError("give --body or --body-file, not both")
    body = args.body.encode() if args.body is not None else b""
    if args.body_file is not None:
        try:
            body = Path(args.body_file).read_bytes()
        except OSError as exc:
            raise UsageError(f"can't read {args.body_file}: {exc.strerror}") from None
    headers = signing.sign_request(settings.admin_hmac_secrets[0], args.method, args.path, body)
    emit(args, headers, " ".join(f"-H {name}:{value}" for name, value in headers.items()))


def register(cli: CommandLine) -> None:
    group = cli.group("admin", "the admin API")
    p = cli.command(
        group,
        "sign",
        cmd_sign,
        "print the headers that sign one admin request (secret: GATEWAY_ADMIN_HMAC_SECRET)",
    )
    p.add_argument("method", type=str.upper)
    p.add_argument("path", help="the path and query as sent: /v1/admin/projects?limit=5")
    p.add_argument("--body", help="the exact request body")
    p.add_argument("--body-file", help="read the exact request body from this file")
