"""What an admin API route is: ``AdminRoute`` and the ``AdminCall`` its function gets.

Apart from the route table (``admin.py``) because two modules read routes: the table
itself, whose ``/openapi.json`` route serves the document, and the document's generator
(``openapi.py``). With the types here, the table imports the generator and the generator
imports only these types: no circle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

PREFIX = "/v1/admin"


@dataclass(frozen=True)
class AdminCall:
    """What a route's ``call`` gets: path parameters, the validated body and query."""

    params: dict[str, str]
    body: Any = None
    query: Any = None
    pool: AsyncConnectionPool | None = None  # for async calls: the project's cell's
    cell: str = "home"  # the cell of the project the path names (or the new project's)


SyncCall = Callable[[Any, AdminCall], Any]  # (sync connection, call) -> data
AsyncCall = Callable[[AdminCall], Awaitable[Any]]


@dataclass(frozen=True)
class AdminRoute:
    method: str
    path: str  # below PREFIX, with {name} parameters
    call: SyncCall | AsyncCall
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    is_async: bool = False
    raw: bool = False  # answer ``data`` itself, not the ``{"ok", "data"}`` envelope
    description: str = ""
    operation_id: str = ""
    extra_responses: dict[int, str] = field(default_factory=dict)

    @property
    def full_path(self) -> str:
        return PREFIX + self.path
