"""The ``gateway`` command: migrations, serving, and provisioning projects, keys and tables.

Every command takes ``--json`` and then prints exactly one JSON object on stdout. Bad
input is one line on stderr and exit status 2 — never a traceback.

This module assembles the command line: each group registers its own commands
(``control/commands/``, ``auth/cli.py``, ``jobs/commands.py``); here are only the parser,
the settings of a command that needs the database, and how an error becomes an exit
status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

from gateway.auth import cli as auth_commands
from gateway.control.commands import admin, key, plan, project, running, table
from gateway.control.commands.common import EXIT_USAGE, CommandLine, Parser, UsageError
from gateway.control.errors import ProvisioningError
from gateway.control.tabledef import DefinitionError
from gateway.db.pool import PlanError
from gateway.http.app import create_app
from gateway.jobs import commands as jobs_commands
from gateway.settings import Settings, SettingsError


def _database_settings() -> Settings:
    """The environment's settings, for a command that needs the database."""
    settings = Settings.from_env()
    settings.require_database()
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gateway", description="Easy Mode Gateway")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    subcommands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    cli = CommandLine(subcommands, common, _database_settings)
    # the order of `gateway --help`
    running.register(cli, app_factory=create_app)
    project_group = project.register(cli)
    key.register(cli)
    plan.register(cli, project_group)
    admin.register(cli)
    table.register(cli)
    auth_commands.register(cli)
    jobs_commands.register(cli)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (UsageError, ProvisioningError, DefinitionError, SettingsError, PlanError) as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
        print(f"gateway: error: can't reach the database: {first_line}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
