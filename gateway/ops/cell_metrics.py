"""Metrics by cell: which cell answered each request, and each cell's pool and health.

The instance-wide families (``gateway_requests``, ``gateway_pool_*``) stay what they were:
every request, home's pool. With several cells an operator must also see ONE cell's
latency and errors (a slow or down database shows in its own cell, not diluted in the
instance's figures), so:

* a request's cell is noted where it is resolved (``Cells.runtime_for`` /
  ``runtime_named`` call ``note_cell``) into a per-request box that the observe
  middleware opens when the request starts and takes when it ends (both the stack and
  the lean path call ``started`` and ``finish``); the box is a mutable list in a
  ``ContextVar``, so a note reaches the middleware even from a task that copied the
  context. Requests that never resolve a cell (health, metrics, admin) are not counted
  per cell;
* ``gateway_cell_requests{cell,status}`` and ``gateway_cell_request_duration_seconds{cell}``
  (p95 by cell from the histogram), and gauges per cell read at scrape time from the
  ``cells`` source (``Cells.stats``): available, pool size / idle / waiting / max and
  connection errors.

Cardinality: cells are few (an operator adds them one by one), statuses a handful.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_CURRENT: ContextVar[list[str] | None] = ContextVar("gateway_cell_box", default=None)


def open_box() -> None:
    """At a request's start (``ObserveMiddleware.started``): a box for its cell's name.
    Idempotent: the lean path calls the handler first and the middleware after, and the
    box must keep what the handler noted."""
    if _CURRENT.get() is None:
        _CURRENT.set([])


def note_cell(name: str) -> None:
    """The current request is served by (or refused for) cell ``name``. O(1)."""
    box = _CURRENT.get()
    if box is not None:
        box[:] = [name]


def current_cell() -> str | None:
    """The current request's cell so far (the request log writes its row there)."""
    box = _CURRENT.get()
    return box[0] if box else None


def take_cell() -> str | None:
    """At the request's end: its cell, if one was resolved; the box is closed."""
    box = _CURRENT.get()
    if box is None:
        return None
    _CURRENT.set(None)
    return box[0] if box else None


class RequestFamilies:
    """A request counter by (label, status) and a duration histogram by label, with the
    labelled children looked up once per (label, status): prometheus_client's
    ``labels()`` costs more than the increment. One for routes (``gateway_requests``),
    one for cells."""

    def __init__(
        self,
        registry: CollectorRegistry,
        prefix: str,
        label: str,
        by: str,
        buckets: tuple[float, ...],
    ) -> None:
        self.requests = Counter(
            prefix,
            f"HTTP requests answered, by {by} and status code",
            [label, "status"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{prefix.removesuffix('s')}_duration_seconds",
            f"Time from request start to response end, by {by}",
            [label],
            buckets=buckets,
            registry=registry,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, value: str, status: int, duration_s: float) -> None:
        children = self._children.get((value, status))
        if children is None:
            children = (self.requests.labels(value, str(status)), self.duration.labels(value))
            self._children[(value, status)] = children
        children[0].inc()
        children[1].observe(duration_s)


GAUGES = (
    ("gateway_cell_available", "available", "1 while the cell's database is reachable"),
    ("gateway_cell_pool_size", "pool_size", "Connections open in the cell's pool"),
    ("gateway_cell_pool_available", "pool_available", "Idle connections in the cell's pool"),
    ("gateway_cell_pool_waiting", "requests_waiting", "Requests waiting for the cell's pool"),
    ("gateway_cell_pool_max", "pool_max", "The planned maximum of the cell's pool"),
)


class CellMetrics(Collector):
    """The per-cell families; ``read_cells`` returns ``Cells.stats()["cells"]``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        read_cells: Callable[[], Mapping[str, Any]],
        buckets: tuple[float, ...],
    ) -> None:
        self.read_cells = read_cells
        self.requests = RequestFamilies(
            registry, "gateway_cell_requests", "cell", "the project's cell", buckets
        )
        registry.register(self)

    def observe(self, cell: str, status: int, duration_s: float) -> None:
        self.requests.observe(cell, status, duration_s)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read at scrape time

    def collect(self) -> Iterator[Metric]:
        cells = self.read_cells()
        for name, key, help_text in GAUGES:
            fam = GaugeMetricFamily(name, help_text, labels=["cell"])
            for cell, stats in sorted(cells.items()):
                fam.add_metric([cell], float(stats.get(key) or 0))
            yield fam
        fam = CounterMetricFamily(
            "gateway_cell_pool_connection_errors",
            "Failed attempts to open a connection to the cell's database",
            labels=["cell"],
        )
        for cell, stats in sorted(cells.items()):
            fam.add_metric([cell], float(stats.get("connections_errors") or 0))
        yield fam
