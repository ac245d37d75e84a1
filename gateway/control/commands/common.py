"""What every ``gateway`` command group shares: the parser class, ``--json`` output,
argument types, and ``CommandLine`` — what ``gateway/cli.py`` hands each group's
``register``.

Conventions of every command: ``--json`` prints exactly one JSON object on stdout; bad
input is one line on stderr and exit status 2 (``UsageError``, or any refusal the
operations raise) — never a traceback.

The groups live beside the capability they drive (``control/commands/``,
``auth/cli.py``, ``jobs/commands.py``) and import this module, never ``gateway.cli``:
``gateway/cli.py`` imports every group, so the groups importing it back would be a
circle. What only the assembler knows (how the database is found) comes in through
``CommandLine``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
import psycopg

from gateway.cells import directory
from gateway.control.projects import connect
from gateway.settings import Settings

EXIT_USAGE = 2


class UsageError(Exception):
    """Refused input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2 like every refusal."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def emit(args: argparse.Namespace, payload: dict[str, Any], human: str) -> None:
    """The command's answer: one JSON object with ``--json``, else the human line(s)."""
    if args.json:
        sys.stdout.write(orjson.dumps(payload, default=str).decode() + "\n")
    else:
        print(human)


# --- argument types -----------------------------------------------------------------------


def boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, not {value}")
    return number


def positive_int(value: str) -> int:
    number = non_negative_int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, not {value}")
    return number


# --- what a command group gets ------------------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    """The parser being assembled, and the database as the assembler finds it.

    ``settings(development=…)`` is the environment's settings with the database
    resolved (``DATABASE_URL``, or the local database of ``make run``: see
    ``gateway/cli.py``); ``development=False`` keeps the production defaults even on
    the local database (``gateway serve``).
    """

    subcommands: Any  # the top-level ``add_subparsers()`` action
    common: argparse.ArgumentParser  # the parent parser that adds ``--json``
    settings: Callable[..., Settings]

    def group(self, name: str, help_text: str) -> Any:
        """A command group (``gateway NAME ACTION``); add its actions with ``command``."""
        return self.subcommands.add_parser(name, help=help_text).add_subparsers(
            dest="action", required=True, parser_class=Parser
        )

    def command(
        self, group: Any, name: str, handler: Handler, help_text: str
    ) -> argparse.ArgumentParser:
        """One command in ``group`` (``subcommands`` for a top-level one), with ``--json``;
        ``handler(cli, args)`` runs it."""
        p = group.add_parser(name, parents=[self.common], help=help_text, description=help_text)
        p.set_defaults(handler=functools.partial(handler, self))
        return p

    def connect(self) -> psycopg.Connection[Any]:
        """A connection to the resolved (control) database, on its direct URL (no pooler)."""
        return connect(self.settings().direct_url)

    @contextmanager
    def connect_project(self, ref: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection to the database of the cell that holds project ``ref`` (an id or
        a name): the control database for ``home``'s projects, else a short-lived one
        to the cell (docs/cells.md). An unknown project is ``NotFoundError``."""
        settings = self.settings()
        with connect(settings.direct_url) as control:
            placement = directory.locate(control, ref)
            if placement.cell == directory.HOME:
                yield control
                return
            cell = directory.get_cell(control, placement.cell)
        with directory.connect_cell(settings, cell) as conn:
            yield conn

    def each_cell(self) -> Iterator[tuple[directory.Cell, psycopg.Connection[Any]]]:
        """Every cell, home first, each with a connection of its own (opened in turn)."""
        settings = self.settings()
        with connect(settings.direct_url) as control:
            cells = directory.list_cells(control)
        for cell in cells:
            with directory.connect_cell(settings, cell) as conn:
                yield cell, conn


Handler = Callable[[CommandLine, argparse.Namespace], None]
