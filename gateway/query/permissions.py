"""What a key may read and write, decided from the cached registry alone (no I/O).

The original gateway's rules, kept:

* Column reads: every key loses columns with ``allow_client_read = false``; public keys
  also lose ``is_sensitive`` columns. ``*`` and the default RETURNING expand to the
  readable columns only; if none remain the answer is 403 ``INSUFFICIENT_SCOPES``.
* Filtering or sorting on a column the key cannot read is refused (403
  ``COLUMN_NOT_READABLE``, or ``SENSITIVE_COLUMN_ACCESS`` when the column is unreadable
  only because it is sensitive and the key is public): it would leak values by inference.
* Column writes (the original's ``canWriteColumn``): server and admin keys write every
  column; ``allow_client_write = false`` closes a column to public keys only (403
  ``COLUMN_NOT_WRITABLE``). Sensitive columns stay writable (a sign-up form writes an
  e-mail it may not read back).
* Reads need the ``read`` scope, writes the ``write`` scope (403 ``INSUFFICIENT_SCOPES``).

Choices the original left open, made here:

* Table flags ``allow_client_read`` / ``allow_client_write`` apply to public keys only.
  Server (and admin) keys are trusted backends: they may read and write every table
  except ``is_system_table`` ones, which no key reaches through this API (403
  ``TABLE_NOT_READABLE`` / ``TABLE_NOT_WRITABLE``). Column flags apply to every key type.
  Admin keys are treated exactly like server keys.
* RETURNING is a read. A write on a table the key cannot read at all (no ``read`` scope,
  or a public key on an ``allow_client_read = false`` table: a write-only table such as
  a feedback form) gets no RETURNING by default: ``data`` is null and ``count`` says how
  many rows changed. Asking for ``returning`` explicitly there is 403
  (``INSUFFICIENT_SCOPES`` without the scope, else ``TABLE_NOT_READABLE``). When the
  table is readable but no column is, the default RETURNING is 403
  ``INSUFFICIENT_SCOPES`` as in the original.
* Filters of UPDATE/DELETE follow the column rules only (as in the original), so a
  write-only table can still be updated by a filter on its readable columns.
* Scopes are checked before the table is looked up, so a key without the scope cannot
  probe which tables exist.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.metadata.catalog import ColumnInfo, Principal, ProjectCatalog, TableInfo


def _table_readable(table: TableInfo, principal: Principal) -> bool:
    if table.is_system_table or not principal.has_scope("read"):
        return False
    return not (principal.is_public and not table.allow_client_read)


def _table_writable(table: TableInfo, principal: Principal) -> bool:
    if table.is_system_table or not principal.has_scope("write"):
        return False
    return not (principal.is_public and not table.allow_client_write)


def column_readable(column: ColumnInfo, principal: Principal) -> bool:
    """The column rule alone (the table rule is applied by the callers)."""
    if not column.allow_client_read:
        return False
    return not (principal.is_public and column.is_sensitive)


def column_writable(column: ColumnInfo, principal: Principal) -> bool:
    """The original's rule: ``allow_client_write = false`` binds public keys only."""
    return column.allow_client_write or not principal.is_public


def row_owner(table: TableInfo, principal: Principal, *, write: bool) -> str | None:
    """The user whose rows this statement is held to; None: every row.

    Owner tables (docs/auth.md): a public key reads and writes only its session user's
    rows (``row_access = "owner"``), or reads every row and writes its own
    (``"public_read"``). Server and admin keys are trusted backends: every row. A public
    key without a session on a statement that needs one → 401 ``SESSION_REQUIRED``.
    """
    if not table.owned or not principal.is_public:
        return None
    if not write and table.row_access == "public_read":
        return None
    if principal.user_id is None:
        raise GatewayError(
            "SESSION_REQUIRED",
            f"table '{table.name}' holds rows that belong to users: sign in and send the "
            "session as 'Authorization: Bearer <token>' (with the key in x-api-key)",
            status=401,
            details={"table": table.name},
        )
    return principal.user_id


def owner_mismatch(table: TableInfo, field: str) -> GatewayError:
    return GatewayError(
        "ROW_OWNER_MISMATCH",
        f"{field}: rows of table '{table.name}' belong to the signed-in user; "
        f"'{table.owner_column}' can't name another user",
        status=403,
        details={"field": field, "column": table.owner_column},
    )


def readable_columns(table: TableInfo, principal: Principal) -> tuple[str, ...]:
    """Columns this key may see, in table order; empty if the table itself is unreadable.

    The realtime feature filters change rows with this, so it includes the table and
    scope rules, not just the column flags.
    """
    if not _table_readable(table, principal):
        return ()
    return tuple(c.name for c in table.columns if column_readable(c, principal))


def resolve_table(
    catalog: ProjectCatalog, name: str, principal: Principal, *, write: bool
) -> TableInfo:
    """The table a query names, if the key may use it for this kind of operation."""
    scope = "write" if write else "read"
    if not principal.has_scope(scope):
        raise GatewayError(
            "INSUFFICIENT_SCOPES",
            f"this API key lacks the '{scope}' scope",
            details={"requiredScope": scope},
        )
    table = catalog.table(name)
    if table is None:
        raise GatewayError(
            "TABLE_NOT_FOUND", f"table '{name}' does not exist", details={"table": name}
        )
    if write:
        if not _table_writable(table, principal):
            raise GatewayError(
                "TABLE_NOT_WRITABLE",
                f"table '{name}' is not writable with this API key",
                details={"table": name},
            )
    elif not _table_readable(table, principal):
        raise GatewayError(
            "TABLE_NOT_READABLE",
            f"table '{name}' is not readable with this API key",
            details={"table": name},
        )
    return table


def _column(table: TableInfo, name: str, field: str) -> ColumnInfo:
    column = table.column(name)
    if column is None:
        raise GatewayError(
            "COLUMN_NOT_FOUND",
            f"{field}: column '{name}' does not exist in table '{table.name}'",
            details={"field": field, "column": name, "table": table.name},
        )
    return column


def require_readable(table: TableInfo, name: str, principal: Principal, field: str) -> ColumnInfo:
    """A column the query reads, filters or sorts on: it must exist and be readable.

    Only the column rule: the table rule is the caller's (``resolve_table`` for reads,
    ``returning_columns`` for RETURNING).
    """
    column = _column(table, name, field)
    if not column_readable(column, principal):
        sensitive_only = column.allow_client_read and column.is_sensitive
        code = "SENSITIVE_COLUMN_ACCESS" if sensitive_only else "COLUMN_NOT_READABLE"
        raise GatewayError(
            code,
            f"{field}: column '{name}' is not readable with this API key",
            details={"field": field, "column": name},
        )
    return column


def require_writable(table: TableInfo, name: str, principal: Principal, field: str) -> ColumnInfo:
    column = _column(table, name, field)
    if not column_writable(column, principal):
        raise GatewayError(
            "COLUMN_NOT_WRITABLE",
            f"{field}: column '{name}' is not writable with this API key",
            details={"field": field, "column": name},
        )
    return column


def select_columns(
    table: TableInfo,
    requested: tuple[str, ...] | None,
    principal: Principal,
    field: str,
) -> tuple[ColumnInfo, ...]:
    """The columns a SELECT (or an explicit RETURNING) yields; ``None`` means ``*``."""
    if requested is None:
        names = readable_columns(table, principal)
        if not names:
            raise GatewayError(
                "INSUFFICIENT_SCOPES",
                f"{field}: this API key cannot read any column of table '{table.name}'",
                details={"field": field, "table": table.name},
            )
        return tuple(c for c in table.columns if c.name in names)
    return tuple(
        require_readable(table, name, principal, f"{field}[{i}]")
        for i, name in enumerate(requested)
    )


def returning_columns(
    table: TableInfo,
    requested: tuple[str, ...] | None,
    principal: Principal,
    field: str,
    *,
    explicit: bool,
) -> tuple[ColumnInfo, ...]:
    """RETURNING of a write: empty means "no RETURNING" (table unreadable for this key)."""
    if not _table_readable(table, principal):
        if not explicit:
            return ()
        if not principal.has_scope("read"):
            raise GatewayError(
                "INSUFFICIENT_SCOPES",
                f"{field}: returning rows needs the 'read' scope",
                details={"field": field, "requiredScope": "read"},
            )
        raise GatewayError(
            "TABLE_NOT_READABLE",
            f"{field}: table '{table.name}' is not readable with this API key",
            details={"field": field, "table": table.name},
        )
    return select_columns(table, requested, principal, field)


def schema_view(catalog: ProjectCatalog, principal: Principal) -> dict[str, Any]:
    """The ``/schema`` body; columns the key cannot read are left out entirely."""
    show_sensitive = not principal.is_public
    tables: list[dict[str, Any]] = []
    for name in sorted(catalog.tables):
        table = catalog.tables[name]
        readable = set(readable_columns(table, principal))
        columns: list[dict[str, Any]] = []
        for c in table.columns:
            if c.name not in readable:
                continue
            col: dict[str, Any] = {
                "name": c.name,
                "type": c.data_type,
                "nullable": c.is_nullable,
                "primaryKey": c.is_primary_key,
            }
            if show_sensitive:
                col["sensitive"] = c.is_sensitive
            columns.append(col)
        tables.append(
            {
                "name": table.name,
                "columns": columns,
                "readable": _table_readable(table, principal),
                "writable": _table_writable(table, principal),
                "system": table.is_system_table,
                "rowAccess": table.row_access,
                "ownerColumn": table.owner_column,
            }
        )
    return {
        "project_id": catalog.project_id,
        "schema_name": catalog.schema_name,
        "tables": tables,
        "table_count": len(tables),
    }
