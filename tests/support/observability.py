"""Reading what the gateway reports about itself: request-log rows and metrics.

Shared by the in-process tests (tests/db) and the ones against real processes
(tests/cluster), so both read the log and the exposition format the same way.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.support.polling import wait_until

# every family /metrics must expose once the app has served a request
FAMILIES = [
    "gateway_requests_total",
    "gateway_request_duration_seconds",
    "gateway_admission_decisions_total",
    "gateway_metadata_cache_hits_total",
    "gateway_metadata_cache_misses_total",
    "gateway_metadata_cache_loads_total",
    "gateway_metadata_cache_invalidations_total",
    "gateway_metadata_cache_entries",
    "gateway_listener_up",
    "gateway_listener_reconnects_total",
    "gateway_pool_size",
    "gateway_pool_available",
    "gateway_pool_waiting",
    "gateway_pool_timeouts_total",
    "gateway_pool_connection_errors_total",
    "gateway_pool_max",
    "gateway_db_connections",
    "gateway_request_log_buffer_rows",
    "gateway_request_log_dropped_rows_total",
    "process_resident_memory_bytes",
    "gateway_build_info",
]


def rows_for(pg_url: str, instance_id: str) -> list[dict[str, Any]]:
    """The request-log rows one instance wrote, oldest first."""
    with psycopg.connect(pg_url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM gateway.request_log WHERE instance_id = %s ORDER BY id",
            (instance_id,),
        ).fetchall()


def wait_rows(pg_url: str, instance_id: str, count: int, timeout: float = 30) -> None:
    """Until the instance's buffered writer has flushed at least ``count`` rows."""
    wait_until(
        lambda: len(rows_for(pg_url, instance_id)) >= count,
        timeout=timeout,
        interval=0.1,
        message=f"{count} request-log rows for {instance_id}",
    )


def parse_samples(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` from the Prometheus text format (comments skipped)."""
    return {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
