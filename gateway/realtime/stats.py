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
    horizon_wait_s: float = 0.0  # how long the last commit-barrier statement took
    horizon_busy: int = 0  # polls whose barrier wasn't granted (an early stamp held it)
    last_poll_monotonic: float = field(default=0.0)
