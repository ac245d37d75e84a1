"""A bounded least-recently-used map: the compiled plans of one project's catalog.

It lives on the ``ProjectCatalog`` (``catalog.plans``) so that a plan can never outlive the
metadata it was compiled against: a metadata change replaces the catalog object
(``metadata/cache.py``), and the plans go with it. No version numbers to compare.

Bounded twice, because a client chooses its query shapes and can send endless ones: at
most ``max_entries`` plans and ``max_weight`` of total weight (the caller weighs a plan by
its text and parameters), the least recently used going first. A plan heavier than the
whole budget is simply not kept. Single-threaded use (one event loop) needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

# docs/query-api.md "Compiled plans": a few hundred shapes cover an app's queries; the
# weight bound keeps a client that sends large distinct statements at ~1 MB per project.
MAX_PLANS = 256
MAX_PLAN_WEIGHT = 1 << 20


class PlanCache:
    __slots__ = ("_entries", "hits", "max_entries", "max_weight", "misses", "weight")

    def __init__(self, max_entries: int = MAX_PLANS, max_weight: int = MAX_PLAN_WEIGHT) -> None:
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.max_entries = max_entries
        self.max_weight = max_weight
        self.weight = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any:
        """The plan for ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, plan: Any, weight: int) -> None:
        if weight > self.max_weight:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.weight -= old[1]
        self._entries[key] = (plan, weight)
        self.weight += weight
        while len(self._entries) > self.max_entries or self.weight > self.max_weight:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.weight -= dropped

    def __len__(self) -> int:
        return len(self._entries)
