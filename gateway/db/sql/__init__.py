"""The SQL functions the migrations install: one ``.sql`` file per function or small concern.

Each file in this folder is the CURRENT definition, readable on its own: what the database
runs after ``alembic upgrade head``. Migrations never read these files. A migration that
creates or changes a function runs a FROZEN copy of that version,
``alembic/versions/sql/<revision>/<name>.sql``, so that replaying history (a fresh
database, a downgrade and an upgrade) installs what each revision installed, whatever the
files here say today. ``tests/db/test_sql_functions.py`` checks both: these files against
``pg_get_functiondef`` after ``upgrade head``, and the newest frozen copy of each function
against its file here. docs/sql.md has the workflow for changing a function.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def current(name: str) -> str:
    """The text of ``gateway/db/sql/<name>.sql``."""
    return (FOLDER / f"{name}.sql").read_text()


def frozen(migration_file: str, *copies: str) -> str:
    """The frozen copies ``"<revision>/<name>"`` kept in ``sql/`` beside a migration module
    (pass the module's ``__file__``), joined in the order given.

    Found relative to the migration itself, so they are wherever alembic finds the
    migrations (``gateway migrate`` points alembic at the checkout's ``alembic/``)."""
    folder = Path(migration_file).resolve().parent / "sql"
    return "\n".join((folder / f"{copy}.sql").read_text() for copy in copies)
