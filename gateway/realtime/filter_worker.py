"""What runs inside the realtime filter worker process (``evaluation.py`` starts it).

The worker receives a batch of (subscription, change) pairs as plain data: each
subscription's filter spec (its filters, column types and owner: the compiled predicate
is a closure and can't cross a process boundary, so the worker compiles it and keeps it
by the subscription's token) and each change as the JSON text PostgreSQL sent. It parses,
classifies, and answers with one small verdict per pair. Nothing here holds the gateway's
interpreter: the parse and the filters' CPU run in another process, under another GIL,
at a lower CPU priority.

Pure: no I/O, no psycopg; the classification is the subscription's own
(``filters.classify_change``), so a verdict is the same wherever it is computed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

from gateway.errors import GatewayError
from gateway.realtime.events import Change, Cursor
from gateway.realtime.filters import (
    Filter,
    FilterLike,
    FilterTooExpensive,
    Predicate,
    classify_change,
    compile_filters,
)

# The most worker time one project's filters may take in one batch of verdicts (a poll
# page or a catch-up page). The hub dispatches a page once all its verdicts are known and
# there is one worker, so without a share per project one tenant's many filtered streams
# (each filter within its own budget) would delay every other tenant's delivery on the
# instance by as long as they take. Past the share, that project's remaining streams in
# the batch end with FILTER_TOO_EXPENSIVE; their clients resume from their last id.
PROJECT_SHARE_S = 0.5
SHARE_EXCEEDED = (
    "this project's realtime filters need too much work on this table's changes: "
    "reconnect with the last id, and use fewer or simpler filters"
)
# compiled predicates kept by subscription token; a stream's spec never changes, so an
# entry is only ever evicted (least recently used), never stale
COMPILED_MAX = 4096

# a verdict as it crosses back: nothing, the change, its ``leave`` form, or an error
NOTHING, CHANGE, LEAVE = 0, 1, 2
WireVerdict = int | tuple[str, str]


class FilterSpec(NamedTuple):
    """A subscription's filter as data: what the worker needs to compile its predicate."""

    token: int  # unique per subscription for the process's life: the compiled cache key
    project_id: str
    filters: tuple[tuple[str, str, Any], ...]  # (column, op, value)
    column_types: dict[str, str] | None
    owner: str | None


class ChangeText(NamedTuple):
    """A change as read from the log, before parsing (``events.change_from_row``)."""

    seq: int
    id: int
    op: str
    pk: str
    row: str | None
    old_row: str | None
    owner: str | None


class Batch(NamedTuple):
    specs: dict[int, FilterSpec]  # token -> spec, for the tokens in ``pairs``
    changes: list[ChangeText]
    pairs: list[tuple[int, int]]  # (token, index in ``changes``)


class _Compiled(NamedTuple):
    predicate: Predicate
    filter_columns: tuple[str, ...]
    owner: str | None


_compiled: OrderedDict[int, _Compiled] = OrderedDict()


# how often the worker checks that the instance that started it still runs
PARENT_CHECK_S = 1.0


def init_worker(niceness: int) -> None:
    """Run at a lower CPU priority (on a busy machine the OS prefers request handling),
    and end with the instance: a SIGKILLed instance can't stop its worker, and the
    worker's queue never reports the parent gone (it holds a write end of it itself)."""
    with contextlib.suppress(OSError):  # not permitted here: run at the same priority
        os.nice(niceness)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _compile(spec: FilterSpec) -> _Compiled:
    token = spec.token
    hit = _compiled.get(token)
    if hit is not None:
        _compiled.move_to_end(token)
        return hit
    filters = [Filter(c, op, v) for c, op, v in spec.filters]
    predicate, columns = compile_filters(filters, spec.column_types)
    entry = _compiled[token] = _Compiled(predicate, columns, spec.owner)
    if len(_compiled) > COMPILED_MAX:
        _compiled.popitem(last=False)
    return entry


def _parse(text: ChangeText, project_id: str) -> Change:
    return Change(
        cursor=Cursor(text.seq, text.id),
        project_id=project_id,
        table="",
        op=text.op,
        pk=orjson.loads(text.pk),
        row_text=text.row,
        old_text=text.old_row,
        owner=text.owner,
    )


def _one(compiled: _Compiled, change: Change) -> WireVerdict:
    try:
        seen = classify_change(compiled.predicate, compiled.filter_columns, compiled.owner, change)
    except GatewayError as exc:
        return (exc.code, exc.message)
    except Exception:  # a filter must never stop the poller for everyone
        return NOTHING
    if seen is None:
        return NOTHING
    return LEAVE if seen.op == "leave" else CHANGE


def evaluate(batch: Batch) -> list[WireVerdict]:
    """Every pair's verdict, each project within its share of this batch's time."""
    spent: dict[str, float] = {}
    parsed: dict[int, Change] = {}
    out: list[WireVerdict] = []
    for token, index in batch.pairs:
        spec = batch.specs[token]
        used = spent.get(spec.project_id, 0.0)
        if used > PROJECT_SHARE_S:
            out.append((FilterTooExpensive(SHARE_EXCEEDED).code, SHARE_EXCEEDED))
            continue
        started = time.perf_counter()
        change = parsed.get(index)
        if change is None:
            change = parsed[index] = _parse(batch.changes[index], spec.project_id)
        out.append(_one(_compile(spec), change))
        spent[spec.project_id] = used + time.perf_counter() - started
    return out


def wire_change(change: Change) -> ChangeText:
    """The change as text for the worker: the row as read (never parsed here), the
    primary key (small) serialized again."""
    return ChangeText(
        change.cursor.seq,
        change.cursor.id,
        change.op,
        orjson.dumps(change.pk).decode(),
        change.row_text,
        change.old_text,
        change.owner,
    )


_tokens = itertools.count(1)


def spec_of(
    project_id: str,
    filters: Iterable[FilterLike],
    column_types: Mapping[str, str] | None,
    owner: str | None,
) -> FilterSpec:
    """A subscription's filter as data, with a token no other subscription will get."""
    return FilterSpec(
        next(_tokens),
        project_id,
        tuple((f.column, f.op, f.value) for f in filters),
        dict(column_types) if column_types else None,
        owner,
    )
