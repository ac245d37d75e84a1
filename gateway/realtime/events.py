"""Positions in the change log, the changes read from it, and the events a stream yields."""

from __future__ import annotations

import re
from collections.abc import (
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from gateway.errors import GatewayError

MAX_BIGINT = 2**63 - 1


# --- cursors ------------------------------------------------------------------------------


class Cursor(NamedTuple):
    """A position in the change log: ``(seq, id)``, the commit number of the writing
    transaction (``gateway.commits``) and the change's id; tuples compare like the SQL row
    value. Cursors issued before migration 0017 held the xid: it became that commit's
    number, so they keep working."""

    seq: int
    id: int

    def __str__(self) -> str:
        return f"{self.seq}-{self.id}"


_CURSOR_RE = re.compile(r"^([0-9]{1,19})-([0-9]{1,19})$")


def parse_cursor(raw: str) -> Cursor:
    """``<seq>-<id>``, both decimal, at most 2**63-1; anything else is 400 INVALID_QUERY."""
    match = _CURSOR_RE.match(raw.strip()) if isinstance(raw, str) else None
    if match:
        seq, id_ = int(match.group(1)), int(match.group(2))
        if seq <= MAX_BIGINT and id_ <= MAX_BIGINT:
            return Cursor(seq, id_)
    raise GatewayError(
        "INVALID_QUERY",
        "invalid realtime cursor: expected '<seq>-<id>' as sent in an event's id",
        details={"field": "since"},
    )


# --- changes ------------------------------------------------------------------------------

# what a subscriber can receive for a change: the captured operations, and ``leave`` (an
# update moved the row out of the subscriber's filter; primary key only)
CHANGE_KINDS = frozenset({"insert", "update", "delete", "truncate", "leave"})


@dataclass(frozen=True, slots=True)
class Change:
    cursor: Cursor
    project_id: str
    table: str
    op: str  # insert | update | delete | truncate, or leave (derived per subscriber)
    pk: dict[str, Any]  # {} for truncate
    # the row as the database sent it (JSON text); None for deletes (only the primary key
    # is kept) and truncate. Parsed on first use (``row``): a row that only a filter
    # reads is parsed in the filter worker process (``filter_worker.py``), never here, and
    # a row no subscriber receives is never parsed by the gateway at all
    row_text: str | None
    age_s: float = 0.0  # database clock: how old the change was when it was read
    # owner tables: the row's user (the old row's for a delete), from the capture trigger
    owner: str | None = None
    # rendered SSE blocks by readable-column set: subscribers with the same permissions
    # share one serialization instead of one per subscriber
    rendered: dict[Any, tuple[dict[str, Any], bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # an update's old row as the database sent it (JSON text), parsed only when a filtered
    # subscriber's predicate rejects the new row; NULL for changes captured before 0007
    old_text: str | None = field(default=None, compare=False, repr=False)
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def row(self) -> dict[str, Any] | None:
        """The row image (parsed once, shared by every subscriber)."""
        if self.row_text is None:
            return None
        row = self.memo.get("row")
        if row is None:
            row = self.memo["row"] = orjson.loads(self.row_text)
        parsed: dict[str, Any] = row
        return parsed

    @property
    def image(self) -> dict[str, Any]:
        row = self.row
        return row if row is not None else self.pk

    def old_row(self) -> dict[str, Any] | None:
        """The row before an update (parsed once, shared by every subscriber)."""
        if self.old_text is None:
            return None
        if "old" not in self.memo:
            self.memo["old"] = orjson.loads(self.old_text)
        old: dict[str, Any] = self.memo["old"]
        return old

    def as_leave(self) -> Change:
        """This update seen by a subscriber whose filter the row no longer matches: the
        primary key only. One object per change, so those subscribers share its renders."""
        leave = self.memo.get("leave")
        if leave is None:
            leave = self.memo["leave"] = Change(
                self.cursor,
                self.project_id,
                self.table,
                "leave",
                self.pk,
                None,
                self.age_s,
                owner=self.owner,
            )
        result: Change = leave
        return result


def change_from_row(
    project_id: str,
    table: str,
    r: Sequence[Any],
    offset: int,
    age: Any,
    owner: str | None = None,
) -> Change:
    """From ``seq, id, op, pk, row, old_row`` at ``offset`` in a result row."""
    seq, id_, op, pk, row, old = r[offset : offset + 6]
    return Change(
        cursor=Cursor(int(seq), int(id_)),
        project_id=project_id,
        table=table,
        op=op,
        pk=orjson.loads(pk),
        row_text=row,
        age_s=float(age or 0.0),
        old_text=old,
        owner=owner,
    )


# --- subscriptions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """What a subscription yields: a change, or a control event, or a heartbeat."""

    kind: str  # CHANGE_KINDS | reset | overflow | error | position | ping
    cursor: Cursor | None = None
    data: dict[str, Any] | None = None
    raw: bytes | None = None  # the whole SSE block, when already rendered
