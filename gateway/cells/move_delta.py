"""The rows a project's writes change while a move's bulk copy runs, so that the write
freeze copies only those (``gateway project move``, docs/cells.md).

Before the bulk copy, every table of the project's schema on the source gets a row
trigger that records the primary key of each row inserted, updated (old and new key) or
deleted into ``<schema>.gateway_move_delta``, and a statement trigger that marks a
TRUNCATE. The tracking is committed before the bulk copy's snapshot is taken, so every
change the snapshot misses is recorded (a change both in the snapshot and recorded is
copied twice, harmlessly). In the freeze, with writers locked out, each table's recorded
keys are deleted on the target and the source's current rows for them copied again; a
table that was truncated, or has no primary key, is copied whole.

The delta table lives in the project's schema, owned by the gateway (the project's role
has no privilege on it; the trigger function is SECURITY DEFINER), and goes with the
schema when the source copy is dropped. It is created after the schema is dumped, so the
target never gets it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

DELTA_TABLE = "gateway_move_delta"
TRACK_FUNCTION = "gateway_move_track"

Copier = Callable[
    [psycopg.Connection[Any], psycopg.Connection[Any], sql.Composable, sql.Composable], int
]

_FUNCTION = """
CREATE FUNCTION {schema}.gateway_move_track() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $f$
BEGIN
    IF TG_OP = 'TRUNCATE' OR TG_NARGS = 0 THEN
        INSERT INTO {schema}.gateway_move_delta (tbl, key) VALUES (TG_TABLE_NAME, NULL);
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO {schema}.gateway_move_delta (tbl, key)
        SELECT TG_TABLE_NAME, jsonb_object_agg(k, to_jsonb(OLD) -> k) FROM unnest(TG_ARGV) k;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO {schema}.gateway_move_delta (tbl, key)
        SELECT TG_TABLE_NAME, jsonb_object_agg(k, to_jsonb(NEW) -> k) FROM unnest(TG_ARGV) k;
    END IF;
    RETURN NULL;
END
$f$
"""


def primary_key(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    """The table's primary key columns in key order (empty: it has none)."""
    rows = conn.execute(
        "SELECT a.attname AS name FROM pg_index i"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass"
        " AND i.indisprimary ORDER BY k.n",
        [schema, table],
    ).fetchall()
    return [r["name"] for r in rows]


def remove_tracking(conn: psycopg.Connection[Any], schema: str) -> None:
    """Drop what an earlier attempt installed (its triggers go with the function)."""
    s = sql.Identifier(schema)
    conn.execute(
        sql.SQL("DROP FUNCTION IF EXISTS {}.{}() CASCADE").format(s, sql.Identifier(TRACK_FUNCTION))
    )
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}.{}").format(s, sql.Identifier(DELTA_TABLE)))


def install_tracking(conn: psycopg.Connection[Any], schema: str, tables: list[str]) -> None:
    """Record every change to the project's tables from now on; committed on return, so a
    snapshot taken afterwards misses nothing that is not recorded."""
    s = sql.Identifier(schema)
    with conn.transaction():
        remove_tracking(conn, schema)
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} (tbl text NOT NULL, key jsonb)").format(
                s, sql.Identifier(DELTA_TABLE)
            )
        )
        conn.execute(sql.SQL(_FUNCTION).format(schema=s))
        for table in tables:
            keys = sql.SQL(", ").join(sql.Literal(c) for c in primary_key(conn, schema, table))
            t = sql.Identifier(schema, table)
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER gateway_move_track AFTER INSERT OR UPDATE OR DELETE ON {}"
                    " FOR EACH ROW EXECUTE FUNCTION {}.gateway_move_track({})"
                ).format(t, s, keys)
            )
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER gateway_move_truncate AFTER TRUNCATE ON {}"
                    " FOR EACH STATEMENT EXECUTE FUNCTION {}.gateway_move_track()"
                ).format(t, s)
            )
    conn.commit()


def apply_delta(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    schema: str,
    tables: list[str],
    copy: Copier,
) -> int:
    """Inside the freeze (writers locked out on ``src``, a transaction open on ``dst``):
    make the target's copy of each table equal the source's; returns COPY blocks moved."""
    delta = sql.Identifier(schema, DELTA_TABLE)
    blocks = 0
    for table in tables:
        t = sql.Identifier(schema, table)
        seen = src.execute(
            sql.SQL(
                "SELECT count(*) AS n, count(*) FILTER (WHERE key IS NULL) AS whole"
                " FROM {} WHERE tbl = %s"
            ).format(delta),
            [table],
        ).fetchone()
        if seen is None or seen["n"] == 0:
            continue
        keys = primary_key(src, schema, table)
        if seen["whole"] or not keys:
            dst.execute(sql.SQL("TRUNCATE {}").format(t))
            blocks += copy(src, dst, t, t)
            continue
        columns = sql.SQL(", ").join(sql.Identifier("r", c) for c in keys)
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{c} = k.{c}").format(c=sql.Identifier(c)) for c in keys
        )
        dst.execute("CREATE TEMP TABLE IF NOT EXISTS move_keys (key jsonb) ON COMMIT DROP")
        dst.execute("TRUNCATE pg_temp.move_keys")
        copy(
            src,
            dst,
            sql.SQL("(SELECT DISTINCT key FROM {} WHERE tbl = {})").format(
                delta, sql.Literal(table)
            ),
            sql.SQL("pg_temp.move_keys"),
        )
        dst.execute(
            sql.SQL(
                "DELETE FROM {t} t USING (SELECT DISTINCT {c} FROM pg_temp.move_keys d,"
                " jsonb_populate_record(NULL::{t}, d.key) r) k WHERE {m}"
            ).format(t=t, c=columns, m=match)
        )
        blocks += copy(
            src,
            dst,
            sql.SQL(
                "(SELECT t.* FROM {t} t JOIN (SELECT DISTINCT {c} FROM {d} d,"
                " jsonb_populate_record(NULL::{t}, d.key) r WHERE d.tbl = {name}) k ON {m})"
            ).format(t=t, c=columns, d=delta, name=sql.Literal(table), m=match),
            t,
        )
    return blocks
