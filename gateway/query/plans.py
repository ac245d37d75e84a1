"""Compile once: a query's statement kept per (catalog, query shape), its values bound per request.

A plan is everything about a statement that does not depend on the request's values: the
SQL text (rendered once, byte-identical for every request of the shape, so the executor
can use it as a prepared statement's identity) and, for each ``%s``, how to get the value
from a request — which filter, row or ``set`` entry it comes from, and the conversion
(with its ``INVALID_VALUE`` field path) that the compiler ran on the first request.

The shape (``shape_key``) is whatever the compiler's text and its refusals depend on:
operation, table, columns, the filters' columns and operators (and the ``is`` operand,
which is written as text), sorts, the inserted columns and row count, the ``set``
columns, ``returning``, whether ``maxRows`` is given, the principal's key type, scopes
and whether it has a session, the answer bound, whether it runs in a batch, and the
field prefix of error messages. Values, limits, offsets, ``maxRows`` and the session's
user are never in it: they are parameters. The catalog is not in it either: the plans
live on the catalog object (``ProjectCatalog.plans``), which a metadata change replaces.

Exactness: a shape's first request runs the whole compiler, so every refusal that does
not depend on values (unknown column, permissions, operator on the wrong type...) is
raised then, and a shape that fails is not kept. What remains per request are the checks
that depend on values — their conversions and the owner-column checks — which a plan runs
as ``steps``, in the order the compiler ran them, so a request with several bad values is
refused for the same one as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.metadata.catalog import Principal
from gateway.query.contract import Query

# A value's source for one request: (query, the session's user id) → the bound value,
# raising the request's GatewayError when the value is refused.
Source = Callable[[Query, "str | None"], Any]
# A step: the text positions its value fills (none for a check), and its source.
Step = tuple[tuple[int, ...], Source]


@dataclass(frozen=True, slots=True)
class Plan:
    text: str
    template: tuple[Any, ...]  # the parameters every request shares; None where a step fills
    steps: tuple[Step, ...]  # in the order the compiler converted and checked
    operation: str
    table: str
    mutation: bool  # update or delete: maxRows is resolved per request

    @property
    def weight(self) -> int:
        """What keeping the plan costs, roughly in bytes (the cache's second bound)."""
        return len(self.text) + 64 * (len(self.steps) + len(self.template))

    def params(self, query: Query, user_id: str | None) -> list[Any]:
        params = list(self.template)
        for positions, source in self.steps:
            value = source(query, user_id)
            for position in positions:
                params[position] = value
        return params


def shape_key(
    query: Query, principal: Principal, max_response_bytes: int, in_batch: bool
) -> tuple[Any, ...]:
    """Everything that decides a query's SQL text and its value-independent refusals."""
    filters = tuple(
        (f.column, f.op, f.value) if f.op == "is" else (f.column, f.op) for f in query.filters
    )
    return (
        query.field,
        query.operation,
        query.table,
        query.columns,
        filters,
        query.sorts,
        query.data_columns,
        0 if query.data is None else len(query.data),
        None if query.set is None else tuple(name for name, _ in query.set),
        query.returning,
        query.max_rows is None,
        principal.key_type,
        principal.scopes,
        principal.user_id is None,
        max_response_bytes,
        in_batch,
    )
