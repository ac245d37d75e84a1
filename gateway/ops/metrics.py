"""Prometheus metrics of one instance, on a registry of its own (several apps can live in
one process, e.g. in tests). No label ever carries a project: cardinality stays fixed.

Two kinds of families:
- observed on the request path: ``gateway_requests_total{route,status}``,
  ``gateway_request_duration_seconds{route}``, ``gateway_admission_decisions_total{outcome}``
  (``count_admission``);
- read at scrape time from *sources*: callables other components register with
  ``register_source(name, fn)`` that return a stats dict. This module never reaches
  into their internals; the expected keys are listed in ``SOURCES`` below. A family whose
  source is not registered is still exposed (HELP/TYPE, no sample).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import gateway
from gateway.settings import Settings

logger = logging.getLogger("gateway.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
ADMISSION_OUTCOMES = (
    "admitted",
    "rate_limited",
    "quota_exceeded",
    "unavailable",
    "local_deny",
    "invalid_key",
)

LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# source name -> the stats keys read from it (documented contract for other components)
SOURCES: dict[str, tuple[str, ...]] = {
    "admission": ADMISSION_OUTCOMES,  # cumulative counts per outcome
    "metadata": ("hits", "misses", "loads", "invalidations", "entries"),
    "listener": ("up", "reconnects"),
    "pool": ("pool_size", "pool_available", "requests_waiting", "requests_errors"),
    "pool_plan": ("pool_max",),
    "db_connections": (),  # {instance_id: connections}
    "cells": ("router", "cells"),  # {"router": {...}, "cells": {name: pool stats}}
    "request_log": ("depth", "dropped", "written", "flush_errors"),
    "maintenance": ("is_leader",),
    "realtime": (
        "subscribers",
        "polls",
        "poll_errors",
        "rows_delivered",
        "overflows",
        "send_timeouts",
        "resets",
        "horizon_wait_s",
        "last_change_age_s",
        "horizon_busy",
    ),
}

Source = Callable[[], Mapping[str, Any] | None]


class Metrics:
    def __init__(self, settings: Settings, version: str | None = None) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        self._sources: dict[str, Source] = {}
        self._admission: dict[str, int] = {}
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by route and status code",
            ["route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request start to response end, by route",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        # gateway/ops/looplag.py samples it every 0.1 s from the app's start
        # per cell (gateway/cells/): how long its requests take, and its 5xx answers
        self.cell_duration = Histogram(
            "gateway_cell_request_duration_seconds",
            "Time to answer a request, by the cell of its project",
            ["cell"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.cell_errors = Counter(
            "gateway_cell_errors",
            "Requests answered 5xx (503: the cell's database unavailable), by cell",
            ["cell"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late a periodic timer on the instance's event loop fires (a held loop "
            "delays every request and stream)",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        ProcessCollector(registry=r)
        Info("gateway_build", "The instance id and the gateway version", registry=r).info(
            {"instance_id": settings.instance_id, "version": version or gateway.__version__}
        )
        r.register(_SourceCollector(self))
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._cell_children: dict[str, Any] = {}  # cell → its duration histogram child

    # --- request path ------------------------------------------------------------------

    def observe_request(self, route: str, status: int, duration_s: float) -> None:
        try:
            # the labelled children, looked up once per (route, status): prometheus_client's
            # labels() costs more than the increment (route is a template, never a raw path)
            children = self._children.get((route, status))
            if children is None:
                children = (self.requests.labels(route, str(status)), self.duration.labels(route))
                self._children[(route, status)] = children
            children[0].inc()
            children[1].observe(duration_s)
        except Exception:  # pragma: no cover - metrics must never fail a request
            logger.exception("metrics: observe failed")

    def observe_cell(self, cell: str, status: int, duration_s: float) -> None:
        try:
            child = self._cell_children.get(cell)
            if child is None:  # looked up once per cell, as observe_request's children
                child = self._cell_children[cell] = self.cell_duration.labels(cell)
            child.observe(duration_s)
            if status >= 500:
                self.cell_errors.labels(cell).inc()
        except Exception:  # pragma: no cover - metrics never fail a request
            logger.exception("metrics: observe_cell failed")

    def count_admission(self, outcome: str) -> None:
        """For callers without a stats source of their own (summed with the source)."""
        self._admission[outcome] = self._admission.get(outcome, 0) + 1

    # --- sources -----------------------------------------------------------------------

    def register_source(self, name: str, fn: Source) -> None:
        self._sources[name] = fn

    def read(self, name: str) -> Mapping[str, Any]:
        fn = self._sources.get(name)
        if fn is None:
            return {}
        try:
            return fn() or {}
        except Exception as exc:
            logger.warning("metrics: source %s failed: %s", name, exc)
            return {}

    def has(self, name: str) -> bool:
        return name in self._sources

    # --- exposition --------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _num(stats: Mapping[str, Any], key: str) -> float:
    value = stats.get(key, 0)
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


class _SourceCollector(Collector):
    """Families read from the registered sources at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are dynamic; skip the registry's duplicate check

    def collect(self) -> Iterator[Metric]:
        m = self.m

        # admission
        fam = CounterMetricFamily(
            "gateway_admission_decisions",
            "Admission decisions by outcome (admitted, rate_limited, quota_exceeded, "
            "unavailable, local_deny, invalid_key)",
            labels=["outcome"],
        )
        counts = dict(m._admission)
        for key, value in m.read("admission").items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                counts[key] = counts.get(key, 0) + value
        if counts or m.has("admission"):
            for outcome in ADMISSION_OUTCOMES:
                counts.setdefault(outcome, 0)
        for outcome, value in sorted(counts.items()):
            fam.add_metric([outcome], value)
        yield fam

        # metadata cache and listener
        meta = m.read("metadata")
        present = m.has("metadata")
        for key, help_text in (
            ("hits", "Metadata cache hits"),
            ("misses", "Metadata cache misses"),
            ("loads", "Metadata loads from the database"),
            ("invalidations", "Metadata invalidations received (NOTIFY)"),
        ):
            fam = CounterMetricFamily(f"gateway_metadata_cache_{key}", help_text)
            if present:
                fam.add_metric([], _num(meta, key))
            yield fam
        yield _gauge(
            "gateway_metadata_cache_entries",
            "Projects in the metadata cache",
            _num(meta, "entries") if present else None,
        )
        listener = m.read("listener")
        present = m.has("listener")
        yield _gauge(
            "gateway_listener_up",
            "1 while the LISTEN connection is connected",
            _num(listener, "up") if present else None,
        )
        fam = CounterMetricFamily("gateway_listener_reconnects", "Listener reconnections")
        if present:
            fam.add_metric([], _num(listener, "reconnects"))
        yield fam

        # pool
        pool = m.read("pool")
        present = m.has("pool")
        for name, key, help_text in (
            ("gateway_pool_size", "pool_size", "Connections open in the pool"),
            ("gateway_pool_available", "pool_available", "Idle connections in the pool"),
            ("gateway_pool_waiting", "requests_waiting", "Requests waiting for a connection"),
        ):
            yield _gauge(name, help_text, _num(pool, key) if present else None)
        fam = CounterMetricFamily(
            "gateway_pool_timeouts",
            "Connection requests that failed (timeout or queue full)",
        )
        if present:
            fam.add_metric([], _num(pool, "requests_errors"))
        yield fam
        fam = CounterMetricFamily(
            "gateway_pool_connection_errors", "Failed attempts to open a connection"
        )
        if present:
            fam.add_metric([], _num(pool, "connections_errors"))
        yield fam
        fam = CounterMetricFamily("gateway_pool_connections_lost", "Pool connections found broken")
        if present:
            fam.add_metric([], _num(pool, "connections_lost"))
        yield fam

        # the overload gate and the early local deny (gateway/http/front.py)
        gate = m.read("overload")
        present = m.has("overload")
        for name, key, help_text in (
            ("gateway_overload_inflight", "inflight", "Requests past the overload gate"),
            ("gateway_overload_waiting", "waiting", "Requests waiting at the overload gate"),
        ):
            yield _gauge(name, help_text, _num(gate, key) if present else None)
        fam = CounterMetricFamily(
            "gateway_overload_shed",
            "Requests answered 503 by the overload gate (queue_full, deadline)",
            labels=["reason"],
        )
        if present:
            fam.add_metric(["queue_full"], _num(gate, "shed_queue_full"))
            fam.add_metric(["deadline"], _num(gate, "shed_deadline"))
        yield fam
        fam = CounterMetricFamily(
            "gateway_overload_early_local_denies",
            "Local denies answered before routing and body reading",
        )
        if present:
            fam.add_metric([], _num(gate, "early_local_deny"))
        yield fam
        plan = m.read("pool_plan")
        planned = _num(plan, "pool_max") if m.has("pool_plan") else None
        if planned is None and present:
            planned = _num(pool, "pool_max")
        yield _gauge("gateway_pool_max", "The planned pool maximum of this instance", planned)

        # connections in pg_stat_activity, sampled by the maintenance leader
        fam = GaugeMetricFamily(
            "gateway_db_connections",
            "Gateway connections in pg_stat_activity per instance (reported by the "
            "maintenance leader only; take max by gateway_instance)",
            labels=["gateway_instance"],
        )
        for instance, count in sorted(m.read("db_connections").items()):
            fam.add_metric([str(instance)], float(count))
        yield fam
        maint = m.read("maintenance")
        yield _gauge(
            "gateway_maintenance_leader",
            "1 when this instance led the last maintenance tick",
            _num(maint, "is_leader") if m.has("maintenance") else None,
        )

        # request log
        log = m.read("request_log")
        present = m.has("request_log")
        yield _gauge(
            "gateway_request_log_buffer_rows",
            "Request-log rows waiting in memory",
            _num(log, "depth") if present else None,
        )
        for key, help_text in (
            ("dropped", "Request-log rows dropped (buffer full or unreachable at shutdown)"),
            ("written", "Request-log rows written"),
            ("flush_errors", "Failed request-log flushes"),
        ):
            fam = CounterMetricFamily(f"gateway_request_log_{key}_rows", help_text)
            if key == "flush_errors":
                fam = CounterMetricFamily("gateway_request_log_flush_errors", help_text)
            if present:
                fam.add_metric([], _num(log, key))
            yield fam

        # cells (gateway.cells.runtime.Cells.stats): each cell's pool and availability
        cells = m.read("cells")
        per_cell = cells.get("cells", {}) if isinstance(cells, Mapping) else {}
        for name, key, help_text in (
            ("gateway_cell_up", "available", "1 while the cell's database is reachable"),
            ("gateway_cell_pool_size", "pool_size", "Connections open in the cell's pool"),
            ("gateway_cell_pool_available", "pool_available", "Idle connections of the cell"),
            ("gateway_cell_pool_waiting", "requests_waiting", "Requests waiting for the cell"),
            ("gateway_cell_pool_max", "pool_max", "The cell's planned pool size"),
        ):
            fam = GaugeMetricFamily(name, help_text, labels=["cell"])
            for cell, stats in sorted(per_cell.items()):
                fam.add_metric([cell], _num(stats, key))
            yield fam
        fam = CounterMetricFamily(
            "gateway_cell_connection_errors", "Failed connection attempts, by cell", labels=["cell"]
        )
        for cell, stats in sorted(per_cell.items()):
            fam.add_metric([cell], _num(stats, "connections_errors"))
        yield fam
        router = cells.get("router", {}) if isinstance(cells, Mapping) else {}
        for key, help_text in (
            ("lookups", "Key routes looked up in the control database (cache misses)"),
            ("hits", "Key routes answered from the instance's cache"),
        ):
            fam = CounterMetricFamily(f"gateway_cell_route_{key}", help_text)
            if router:
                fam.add_metric([], _num(router, key))
            yield fam

        # realtime (gateway.realtime.RealtimeHub.snapshot)
        rt = m.read("realtime")
        present = m.has("realtime")
        for name, key, help_text in (
            ("gateway_realtime_subscribers", "subscribers", "Open realtime streams"),
            (
                "gateway_realtime_horizon_wait_seconds",
                "horizon_wait_s",
                "How long the last commit-barrier statement took (it waits for transactions "
                "that are committing realtime changes)",
            ),
            (
                "gateway_realtime_last_change_age_seconds",
                "last_change_age_s",
                "now - created_at of the last change the poller read (database clock)",
            ),
        ):
            yield _gauge(name, help_text, _num(rt, key) if present else None)
        for name, key, help_text in (
            ("gateway_realtime_polls", "polls", "Change-log polls"),
            ("gateway_realtime_poll_errors", "poll_errors", "Failed change-log polls"),
            (
                "gateway_realtime_horizon_busy",
                "horizon_busy",
                "Polls that found the commit barrier held past its timeout (a transaction "
                "stamped its commit early: SET CONSTRAINTS ALL IMMEDIATE)",
            ),
            ("gateway_realtime_events", "rows_delivered", "Change events sent to subscribers"),
            ("gateway_realtime_overflows", "overflows", "Streams closed with overflow"),
            ("gateway_realtime_send_timeouts", "send_timeouts", "Streams dropped on send timeout"),
            ("gateway_realtime_resets", "resets", "Resets sent (cursor older than retention)"),
        ):
            fam = CounterMetricFamily(name, help_text)
            if present:
                fam.add_metric([], _num(rt, key))
            yield fam


def _gauge(name: str, help_text: str, value: float | None) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, help_text)
    if value is not None:
        fam.add_metric([], value)
    return fam
