"""The figures of one instance's realtime hub, for metrics and /readyz.

Its own module because three parts add to it: the hub (polls, dispatch, catch-up), each
subscription (rows delivered) and the stream endpoint (send timeouts) — and the
subscription must not import the hub, which imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HubStats:
    polls: int = 0
    poll_errors: int = 0
    rows_polled: int = 0
    rows_dispatched: int = 0
    rows_delivered: int = 0
    catchup_queries: int = 0
    catalog_loads: int = 0
    overflows: int = 0
    resets: int = 0
    send_timeouts: int = 0
    last_change_age_s: float = 0.0  # now - created_at of the last change read (DB clock)
    held_back_s: float = 0.0  # age of the oldest visible change not yet deliverable
    xmin_lag_xids: int = 0  # how far pg_snapshot_xmin trails the next xid
    last_poll_monotonic: float = field(default=0.0)
