"""``gateway/db/sql/`` is what the database runs (docs/sql.md).

* After ``alembic upgrade head`` (the session's ``pg_url``), every function in schema
  ``gateway`` is defined by exactly one ``CREATE OR REPLACE FUNCTION`` in
  ``gateway/db/sql/*.sql``, and every function there is in the database as written; the
  files' ``COMMENT ON FUNCTION`` and ``REVOKE ... FROM PUBLIC`` statements are the
  database's comments and privileges.
* The newest frozen copy of each function (``alembic/versions/sql/<revision>/``, what
  the migrations load) is its file in ``gateway/db/sql/``: the head migration installs
  exactly the current files.
* Each downgrade leaves exactly the functions (definitions, comments, privileges) that
  a fresh upgrade to the revision below installs.

How a definition is compared with ``pg_get_functiondef``: the body (between the dollar
quotes) byte for byte, since PostgreSQL stores it as written; the header (from ``CREATE``
to ``AS``) with whitespace and ``--`` comments removed, because PostgreSQL regenerates it
with the whole argument list on one line and no comments, while the files spread long
argument lists over several lines and comment them. The files write each header in
PostgreSQL's own spelling (``SET search_path TO 'pg_catalog', 'gateway'``,
``DEFAULT NULL::uuid``), so nothing else needs normalising.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory

from gateway.db import migrate
from gateway.db.sql import FOLDER as CURRENT_FOLDER
from tests.support.scratchdb import scratch_database

FROZEN_FOLDER = Path(__file__).resolve().parents[2] / "alembic" / "versions" / "sql"

FUNCTION_RE = re.compile(
    r"^CREATE OR REPLACE FUNCTION\s+(?P<header>.*?)\bAS\s+(?P<tag>\$\w*\$)(?P<body>.*?)(?P=tag)",
    re.S | re.M,
)
COMMENT_RE = re.compile(
    r"^COMMENT ON FUNCTION\s+(?P<signature>gateway\.\w+\s*\([^)]*\))\s+IS\s+"
    r"(?P<literal>(?:'(?:[^']|'')*'\s*)+);",
    re.S | re.M,
)
REVOKE_RE = re.compile(
    r"^REVOKE\s+(?:EXECUTE|ALL)\s+ON\s+FUNCTION\s+(?P<signature>gateway\.\w+\s*\([^)]*\))"
    r"\s+FROM\s+PUBLIC\s*;",
    re.S | re.M,
)
DATABASE = "the database after upgrade head"


@dataclass(frozen=True)
class Definition:
    """One ``CREATE OR REPLACE FUNCTION`` statement, from a file or from the database."""

    header: str  # from the function's name to AS, as written
    body: str  # between the dollar quotes, byte for byte
    source: str  # the file (relative to the repository), or DATABASE

    @property
    def key(self) -> str:
        """The header without whitespace and comments: name, arguments, result, options."""
        return re.sub(r"\s+", "", re.sub(r"--[^\n]*", "", self.header))

    @property
    def identity(self) -> str:
        """The name and the argument list (``gateway.admit(p_key_hashtext,...)``): which
        function this is, whatever its result and options."""
        depth = 0
        for position, char in enumerate(self.key):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == ")" and depth == 0:
                return self.key[: position + 1]
        raise AssertionError(f"{self.source}: no argument list in {self.header!r}")

    @property
    def name(self) -> str:
        return self.key.split("(", 1)[0]


def parse(text: str, source: str) -> list[Definition]:
    return [
        Definition(m.group("header"), m.group("body"), source) for m in FUNCTION_RE.finditer(text)
    ]


def _relative(path: Path) -> str:
    return path.relative_to(CURRENT_FOLDER.parents[2]).as_posix()


def current_files() -> list[Path]:
    return sorted(CURRENT_FOLDER.glob("*.sql"))


def current_definitions() -> list[Definition]:
    return [d for path in current_files() for d in parse(path.read_text(), _relative(path))]


def frozen_definitions() -> dict[str, list[Definition]]:
    """Per revision, oldest first, the functions its frozen copies define."""
    return {
        revision.name: [
            d
            for path in sorted(revision.glob("*.sql"))
            for d in parse(path.read_text(), _relative(path))
        ]
        for revision in sorted(p for p in FROZEN_FOLDER.iterdir() if p.is_dir())
    }


@pytest.fixture(scope="module")
def database(pg_url: str) -> list[Definition]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT pg_get_functiondef(p.oid) FROM pg_proc p"
            " WHERE p.pronamespace = 'gateway'::regnamespace ORDER BY p.oid::regprocedure::text"
        ).fetchall()
    definitions = [d for (text,) in rows for d in parse(text, DATABASE)]
    assert len(definitions) == len(rows), "pg_get_functiondef printed an unexpected form"
    return definitions


def _diff(expected: Definition, actual: Definition) -> str:
    """A unified diff of two definitions: of the bodies alone when the headers agree."""
    same_header = expected.key == actual.key
    lines = difflib.unified_diff(
        (expected.body if same_header else expected.header + "AS $$" + expected.body).splitlines(),
        (actual.body if same_header else actual.header + "AS $$" + actual.body).splitlines(),
        f"{expected.source}: {expected.identity}" if same_header else expected.source,
        actual.source,
        lineterm="",
    )
    return "\n".join(lines)


def test_each_function_is_written_once() -> None:
    seen: dict[str, Definition] = {}
    twice = []
    for definition in current_definitions():
        if definition.identity in seen:
            twice.append(
                f"{definition.identity}: {seen[definition.identity].source} and {definition.source}"
            )
        seen[definition.identity] = definition
    assert not twice, "defined twice in gateway/db/sql:\n" + "\n".join(twice)
    admits = [d for d in seen.values() if d.name == "gateway.admit"]
    assert len(admits) == 1, "gateway.admit has one definition (one overload)"


def test_every_file_function_is_in_the_database_as_written(database: list[Definition]) -> None:
    installed = {d.key: d for d in database}
    problems = []
    for definition in current_definitions():
        match = installed.get(definition.key)
        if match is None:
            closest = [d for d in database if d.identity == definition.identity] or [
                d for d in database if d.name == definition.name
            ]
            problems.append(
                f"{definition.source}: {definition.identity} is not in {DATABASE} with this "
                "header" + "".join(f"\n{_diff(definition, other)}" for other in closest)
            )
        elif match.body != definition.body:
            problems.append(_diff(definition, match))
    assert not problems, (
        "gateway/db/sql differs from the database: a changed file needs a migration that "
        "loads its frozen copy (docs/sql.md)\n\n" + "\n\n".join(problems)
    )


def test_every_gateway_function_in_the_database_has_a_file(database: list[Definition]) -> None:
    written = {d.key for d in current_definitions()}
    missing = [d.header.split("\n", 1)[0] for d in database if d.key not in written]
    assert not missing, "functions of schema gateway with no file in gateway/db/sql:\n" + (
        "\n".join(missing)
    )


def _canonical(conn: psycopg.Connection[Any], signature: str) -> str:
    row = conn.execute("SELECT %s::regprocedure::text", [signature]).fetchone()
    assert row is not None
    return str(row[0])


def _literal(sql_literal: str) -> str:
    """The value of adjacent SQL string literals ('a' newline 'b' is 'ab')."""
    return "".join(part.replace("''", "'") for part in re.findall(r"'((?:[^']|'')*)'", sql_literal))


def test_comments_and_privileges_are_the_files(pg_url: str) -> None:
    text = "\n".join(path.read_text() for path in current_files())
    with psycopg.connect(pg_url) as conn:
        file_comments = {
            _canonical(conn, m.group("signature")): _literal(m.group("literal"))
            for m in COMMENT_RE.finditer(text)
        }
        file_revoked = {_canonical(conn, m.group("signature")) for m in REVOKE_RE.finditer(text)}
        rows = conn.execute(
            "SELECT p.oid::regprocedure::text, obj_description(p.oid, 'pg_proc'),"
            "       NOT has_function_privilege('public', p.oid, 'EXECUTE')"
            "  FROM pg_proc p WHERE p.pronamespace = 'gateway'::regnamespace"
        ).fetchall()
    db_comments = {signature: comment for signature, comment, _ in rows if comment}
    db_revoked = {signature for signature, _, revoked in rows if revoked}
    assert file_comments == db_comments, "COMMENT ON FUNCTION in gateway/db/sql vs the database"
    assert file_revoked == db_revoked, (
        f"REVOKE ... FROM PUBLIC only in the files: {sorted(file_revoked - db_revoked)}; "
        f"only in the database: {sorted(db_revoked - file_revoked)}"
    )


def test_the_newest_frozen_copy_of_each_function_is_its_file() -> None:
    newest: dict[str, tuple[str, Definition]] = {}
    for revision, definitions in frozen_definitions().items():
        for definition in definitions:
            newest[definition.identity] = (revision, definition)
    problems = []
    for definition in current_definitions():
        if definition.identity not in newest:
            problems.append(f"{definition.source}: {definition.identity} has no frozen copy")
            continue
        _, copy = newest[definition.identity]
        if (copy.key, copy.body) != (definition.key, definition.body):
            problems.append(_diff(copy, definition))
    assert not problems, (
        "a migration must load what gateway/db/sql says: freeze the file in a new migration "
        "(docs/sql.md)\n\n" + "\n\n".join(problems)
    )


def test_migrations_load_functions_from_frozen_copies_only() -> None:
    """No function text inline in a migration module. The one exception is a stub whose
    body is ``SELECT NULL::<type>``, which a downgrade swaps in for a moment."""
    inline = [
        f"{path.name}: {m.group(0)[:70]}..."
        for path in sorted(FROZEN_FOLDER.parent.glob("*.py"))
        for m in re.finditer(
            r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\b.*?\bAS\s+(\$\w*\$)(.*?)\1",
            path.read_text(),
            re.S,
        )
        if not m.group(2).strip().startswith("SELECT NULL::")
    ]
    assert not inline, "function text inline in a migration:\n" + "\n".join(inline)


def _installed(url: str) -> dict[str, tuple[Any, ...]]:
    """Every function of schema gateway: definition, privileges, comment."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text,"
            "       obj_description(p.oid, 'pg_proc')"
            "  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'gateway'"
        ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_each_downgrade_restores_what_the_revision_below_installed(pg_url: str) -> None:
    """Up one revision at a time, then down one at a time: after each downgrade the
    functions are those the upgrade to that revision left (a downgrade loads the right
    frozen copies, and nothing else)."""
    with scratch_database(pg_url, "sqlfn") as url:
        script = ScriptDirectory.from_config(migrate.alembic_config(url))
        revisions = ["base"] + [r.revision for r in reversed(list(script.walk_revisions()))]
        installed: dict[str, dict[str, tuple[Any, ...]]] = {"base": {}}
        for revision in revisions[1:]:
            migrate.upgrade(url, revision)
            installed[revision] = _installed(url)
        for revision in reversed(revisions[:-1]):
            migrate.downgrade(url, revision)
            after = _installed(url)
            changed = sorted(
                signature
                for signature in after.keys() | installed[revision].keys()
                if after.get(signature) != installed[revision].get(signature)
            )
            assert not changed, f"down to {revision}: differs from the upgrade to it: {changed}"
