"""Table definitions for ``gateway table create``: parsed, checked, turned into DDL.

Names match ``^[a-z_][a-z0-9_]{0,62}$`` and types come from an allowlist, so every
identifier and type that ever reaches the registry (and so the query compiler) is known
to be safe. Defaults are JSON literals or one of two whitelisted functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import sql

NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SCALAR_TYPES = (
    "text",
    "integer",
    "bigint",
    "smallint",
    "boolean",
    "numeric",
    "real",
    "double precision",
    "uuid",
    "date",
    "timestamptz",
    "jsonb",
)
ALLOWED_TYPES = frozenset(SCALAR_TYPES) | frozenset(f"{t}[]" for t in SCALAR_TYPES if t != "jsonb")
TYPE_ALIASES = {
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "int2": "smallint",
    "bool": "boolean",
    "float8": "double precision",
    "float4": "real",
    "timestamp with time zone": "timestamptz",
    "decimal": "numeric",
}
IDENTITY_TYPES = frozenset({"integer", "bigint", "smallint"})
FUNCTION_DEFAULTS = {"now()": "now()", "gen_random_uuid()": "gen_random_uuid()"}
RESERVED_COLUMN_NAMES = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid", "oid"})
# what a public key may do with the rows of a table that names an owner column
ROW_ACCESS = ("all", "owner", "public_read")


class DefinitionError(ValueError):
    """A table definition we refuse; the message says which part and why."""


@dataclass(frozen=True)
class ColumnDef:
    name: str
    type: str
    primary_key: bool = False
    identity: bool = False
    nullable: bool = True
    default: Any = None
    has_default: bool = False
    sensitive: bool = False
    client_read: bool = True
    client_write: bool = True


@dataclass(frozen=True)
class TableDef:
    name: str
    columns: tuple[ColumnDef, ...]
    client_read: bool = True
    client_write: bool = True
    # capture triggers are installed unless the definition says "realtime": false
    realtime: bool = True
    # rows that belong to users (docs/auth.md): a uuid column and the public keys' policy
    owner_column: str | None = None
    row_access: str = "all"


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DefinitionError(
            f"{what} {name!r} is not a valid name (lowercase letters, digits and _, "
            "starting with a letter or _, at most 63 characters)"
        )
    return name


def normalize_type(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise DefinitionError(f"{where}: type must be a string")
    cleaned = " ".join(value.strip().lower().split())
    is_array = cleaned.endswith("[]")
    base = cleaned[:-2].strip() if is_array else cleaned
    base = TYPE_ALIASES.get(base, base)
    normalized = f"{base}[]" if is_array else base
    if normalized not in ALLOWED_TYPES:
        allowed = ", ".join(SCALAR_TYPES)
        raise DefinitionError(
            f"{where}: type {value!r} is not allowed (allowed: {allowed}, and arrays of the "
            "scalar ones except jsonb)"
        )
    return normalized


def _flag(raw: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise DefinitionError(f"{where}: {key} must be true or false")
    return value


def parse_column(raw: object, where: str) -> ColumnDef:
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where}: must be an object")
    known = {
        "name",
        "type",
        "primary_key",
        "identity",
        "nullable",
        "default",
        "sensitive",
        "client_read",
        "client_write",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DefinitionError(f"{where}: unknown field(s) {', '.join(unknown)}")
    name = check_name(raw.get("name"), f"{where}: column name")
    if name in RESERVED_COLUMN_NAMES:
        raise DefinitionError(f"{where}: column name {name!r} is reserved by PostgreSQL")
    where = f"column {name!r}"
    data_type = normalize_type(raw.get("type"), where)
    primary_key = _flag(raw, "primary_key", False, where)
    identity = _flag(raw, "identity", False, where)
    if identity and data_type not in IDENTITY_TYPES:
        raise DefinitionError(f"{where}: identity needs an integer type, not {data_type}")
    nullable = _flag(raw, "nullable", not primary_key, where)
    if primary_key and nullable:
        raise DefinitionError(f"{where}: a primary key column can't be nullable")
    has_default = "default" in raw and raw["default"] is not None
    default = raw.get("default")
    if has_default and identity:
        raise DefinitionError(f"{where}: an identity column can't have a default")
    if has_default:
        default_sql(ColumnDef(name, data_type, default=default, has_default=True))
    return ColumnDef(
        name=name,
        type=data_type,
        primary_key=primary_key,
        identity=identity,
        nullable=nullable,
        default=default,
        has_default=has_default or identity,
        sensitive=_flag(raw, "sensitive", False, where),
        client_read=_flag(raw, "client_read", True, where),
        client_write=_flag(raw, "client_write", True, where),
    )


def parse_table(raw: object) -> TableDef:
    if not isinstance(raw, dict):
        raise DefinitionError("the table definition must be a JSON object")
    known = {
        "name",
        "columns",
        "client_read",
        "client_write",
        "realtime",
        "owner_column",
        "row_access",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DefinitionError(f"unknown field(s) {', '.join(unknown)}")
    name = check_name(raw.get("name"), "table name")
    columns_raw = raw.get("columns")
    if not isinstance(columns_raw, list) or not columns_raw:
        raise DefinitionError("columns must be a non-empty array")
    if len(columns_raw) > 200:
        raise DefinitionError("a table has at most 200 columns")
    columns = tuple(parse_column(c, f"columns[{i}]") for i, c in enumerate(columns_raw))
    seen: set[str] = set()
    for column in columns:
        if column.name in seen:
            raise DefinitionError(f"column {column.name!r} appears twice")
        seen.add(column.name)
    if not any(c.primary_key for c in columns):
        raise DefinitionError("the table needs a primary key column")
    owner_column, row_access = check_row_access(
        raw.get("owner_column"), raw.get("row_access", "all"), {c.name: c.type for c in columns}
    )
    return TableDef(
        name=name,
        columns=columns,
        client_read=_flag(raw, "client_read", True, "table"),
        client_write=_flag(raw, "client_write", True, "table"),
        realtime=_flag(raw, "realtime", True, "table"),
        owner_column=owner_column,
        row_access=row_access,
    )


def check_row_access(
    owner_column: object, row_access: object, column_types: dict[str, str]
) -> tuple[str | None, str]:
    """``owner_column`` names a uuid column; ``row_access`` other than "all" needs one."""
    if row_access not in ROW_ACCESS:
        raise DefinitionError(f"row_access must be one of {', '.join(ROW_ACCESS)}")
    assert isinstance(row_access, str)
    if owner_column is None:
        if row_access != "all":
            raise DefinitionError(f"row_access {row_access!r} needs an owner_column")
        return None, row_access
    name = check_name(owner_column, "owner_column")
    if name not in column_types:
        raise DefinitionError(f"owner_column {name!r} is not a column of the table")
    if column_types[name] != "uuid":
        raise DefinitionError(
            f"owner_column {name!r} must be of type uuid (the session user's id), "
            f"not {column_types[name]}"
        )
    return name, row_access


def default_sql(column: ColumnDef) -> sql.Composable:
    value = column.default
    where = f"column {column.name!r}"
    if isinstance(value, str) and value.strip().lower() in FUNCTION_DEFAULTS:
        function = FUNCTION_DEFAULTS[value.strip().lower()]
        if function == "now()" and column.type not in ("timestamptz", "date"):
            raise DefinitionError(f"{where}: now() is a default for timestamptz or date only")
        if function == "gen_random_uuid()" and column.type != "uuid":
            raise DefinitionError(f"{where}: gen_random_uuid() is a default for uuid only")
        return sql.SQL(function)
    if column.type == "jsonb":
        try:
            literal = sql.Literal(orjson.dumps(value).decode())
        except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits
            raise DefinitionError(f"{where}: the default is not JSON that jsonb holds") from None
    elif column.type.endswith("[]"):
        if not isinstance(value, list) or any(isinstance(v, (list, dict)) for v in value):
            raise DefinitionError(f"{where}: the default of an array column must be a flat list")
        literal = sql.Literal(value)
    elif isinstance(value, (dict, list)):
        raise DefinitionError(f"{where}: the default must be a scalar JSON value")
    else:
        literal = sql.Literal(value)
    return sql.SQL("CAST({} AS {})").format(literal, sql.SQL(column.type))


def column_ddl(column: ColumnDef) -> sql.Composed:
    parts: list[sql.Composable] = [sql.Identifier(column.name), sql.SQL(column.type)]
    if column.identity:
        parts.append(sql.SQL("GENERATED BY DEFAULT AS IDENTITY"))
    if not column.nullable:
        parts.append(sql.SQL("NOT NULL"))
    if column.has_default and not column.identity:
        parts.append(sql.SQL("DEFAULT {}").format(default_sql(column)))
    return sql.SQL(" ").join(parts)


def create_table_ddl(schema: str, table: TableDef) -> sql.Composed:
    items = [column_ddl(c) for c in table.columns]
    primary_key = [sql.Identifier(c.name) for c in table.columns if c.primary_key]
    items.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(primary_key)))
    return sql.SQL("CREATE TABLE {}.{} ({})").format(
        sql.Identifier(schema), sql.Identifier(table.name), sql.SQL(", ").join(items)
    )
