"""The ``gateway`` command: migrations, serving, and provisioning projects, keys and tables.

Every command takes ``--json`` and then prints exactly one JSON object on stdout. Bad
input is one line on stderr and exit status 2 — never a traceback.

This module assembles the command line: each group registers its own commands
(``control/commands/``, ``auth/cli.py``, ``jobs/commands.py``); here are only the parser,
how the database is found, and how an error becomes an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg

from gateway.auth import cli as auth_commands
from gateway.cells import commands as cell_commands
from gateway.control.commands import admin, key, plan, project, running, table, types
from gateway.control.commands.common import EXIT_USAGE, CommandLine, Parser, UsageError
from gateway.control.errors import ProvisioningError
from gateway.control.tabledef import DefinitionError
from gateway.db.budget import PlanError
from gateway.db.localdb import DEFAULT_DATA_ROOT, find_local_database
from gateway.jobs import commands as jobs_commands
from gateway.settings import Settings, SettingsError


class DatabaseResolver:
    """The database a command uses: ``DATABASE_URL``, or else the local database that
    ``make run`` (``gateway dev``) keeps in ``./.pgdata``.

    A newcomer who ran ``make run`` can use the CLI in another shell of the same folder
    without building the URL from ``.pgdata/port``; one line on stderr says which
    database it is, so it is never a surprise. With the local database the development
    defaults apply (``Settings.from_env(development=True)``: a job endpoint on loopback is
    admitted, as under ``gateway dev``), except where a command asks for the production
    ones (``gateway serve``). The URL is resolved once per command.
    """

    def __init__(self, data_root: Path = DEFAULT_DATA_ROOT) -> None:
        self.data_root = data_root
        self.local_url: str | None = None

    def settings(self, *, development: bool = True) -> Settings:
        if self.local_url is None and not _url_given():
            self._use_local_database()
        settings = Settings.from_env(development=development and self.local_url is not None)
        settings.require_database()  # no URL and no local database: "DATABASE_URL is not set"
        return settings

    def _use_local_database(self) -> None:
        found = find_local_database(self.data_root)
        if found is None:
            return
        if not found.running:
            raise SettingsError(
                f"DATABASE_URL is not set, and the local database in {self.data_root} is not "
                "running: start it with `make run` (or set DATABASE_URL)"
            )
        self.local_url = found.url
        # in the environment too: `gateway serve --workers N` starts processes that read it
        os.environ["DATABASE_URL"] = found.url
        print(f"gateway: using the local database of make run: {found.url}", file=sys.stderr)


def _url_given() -> bool:
    return any(os.environ.get(name, "").strip() for name in ("DATABASE_URL", "DATABASE_DIRECT_URL"))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gateway", description="Easy Mode Gateway")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    subcommands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    cli = CommandLine(subcommands, common, DatabaseResolver().settings)
    # the order of `gateway --help`
    running.register(cli)
    cell_commands.register(cli)
    project_group = project.register(cli)
    cell_commands.register_move(cli, project_group)
    key.register(cli)
    plan.register(cli, project_group)
    admin.register(cli)
    table.register(cli)
    auth_commands.register(cli)
    jobs_commands.register(cli)
    types.register(cli)
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
