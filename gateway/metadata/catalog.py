"""What the gateway knows about a project's tables: the registry, as immutable values.

The metadata cache loads a ``ProjectCatalog`` in one query and shares it between
requests, so these types are frozen: a request can never change what another sees.
Identifiers that reach SQL come only from here (never from the request body). The one
mutable part, ``ProjectCatalog.plans``, holds only what is derived from the frozen rest
(compiled statements), so sharing it changes no answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.metadata.plancache import PlanCache

KeyType = Literal["public", "server", "admin"]
RowAccess = Literal["all", "owner", "public_read"]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    data_type: str  # as registered: "text", "bigint", "timestamptz", "text[]", ...
    is_nullable: bool = True
    is_primary_key: bool = False
    is_sensitive: bool = False
    allow_client_read: bool = True
    allow_client_write: bool = True
    has_default: bool = False


@dataclass(frozen=True, slots=True)
class TableInfo:
    name: str
    columns: tuple[ColumnInfo, ...]
    is_system_table: bool = False
    allow_client_read: bool = True
    allow_client_write: bool = True
    realtime: bool = False
    # rows that belong to users (docs/auth.md): the uuid column naming a row's user, and
    # what a public key may do: "all" rows (the default), only its "owner" rows, or read
    # all and write its own ("public_read")
    owner_column: str | None = None
    row_access: RowAccess = "all"
    _by_name: dict[str, ColumnInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})

    def column(self, name: str) -> ColumnInfo | None:
        return self._by_name.get(name)

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_primary_key)

    @property
    def owned(self) -> bool:
        """Public keys are held to their session user's rows (for writes at least)."""
        return self.row_access != "all" and self.owner_column is not None


@dataclass(frozen=True, slots=True)
class ProjectCatalog:
    project_id: str
    schema_name: str
    tables: dict[str, TableInfo]
    # the plans compiled against this catalog (query/compiler.py): never copied, so a
    # catalog made from another (dataclasses.replace too) starts with none
    plans: PlanCache = field(default_factory=PlanCache, init=False, compare=False, repr=False)

    def table(self, name: str) -> TableInfo | None:
        return self.tables.get(name)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the key's type and scopes (the key itself never travels this far),
    and the end user of the request's session, resolved by admission (None: no session)."""

    key_type: KeyType
    scopes: frozenset[str] = frozenset({"read", "write"})
    user_id: str | None = None

    @property
    def is_public(self) -> bool:
        return self.key_type == "public"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
