"""How the realtime hub joins the instance's life: its figures as a metrics source,
retention as a maintenance job, and draining the streams when a shutdown signal comes.

Apart from the hub (``hub.py``) because this is wiring done once at startup by the
app's lifespan, not part of reading and fanning out changes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from typing import Any

from psycopg import AsyncConnection

from gateway.realtime import evaluation
from gateway.realtime.hub import RealtimeHub
from gateway.realtime.retention import prune_changes

GIL_SWITCH_INTERVAL_S = 0.001

logger = logging.getLogger("gateway.realtime")


def drain_on_signals(hub: RealtimeHub) -> None:
    """Chain SIGTERM/SIGINT: drain the hub, then whatever handler was there (uvicorn's).

    uvicorn waits for open connections before it runs the lifespan shutdown; SSE streams
    never finish on their own, so without this a SIGTERM would hold every stream (and the
    exit) for the whole graceful-shutdown timeout. Only possible in the main thread (not
    under a test client); uvicorn restores its own handlers when it exits.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(hub.drain)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - not the main thread after all
            return


def install(hub: RealtimeHub, extras: dict[str, Any]) -> None:
    """Hook the hub into the instance: its figures as the ``realtime`` metrics source, and
    retention as a job of the maintenance leader (one instance per tick).

    The job deliberately does NOT delete inside the leader's transaction (the ``conn`` it
    is given): each batch commits on its own connection in a few milliseconds instead of
    holding its row locks (and the deleted rows' commit stamps) for the whole tick.
    """
    # The filter worker is a process of its own (evaluation.py), started now so the first
    # filtered stream does not wait for an interpreter to start.
    evaluation.WORKER.start()
    # The worker pool's feeder threads (they pickle a batch's row texts into the pipe)
    # and the loop share the GIL; a waiting thread gets it back after the switch
    # interval. 1 ms instead of Python's 5 ms keeps a victim's request from waiting 5 ms
    # per hand-over; when no thread runs, the loop alone wants the GIL: nothing changes.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    metrics = extras.get("metrics")
    if metrics is not None:
        metrics.register_source("realtime", hub.snapshot)
    maintenance = extras.get("maintenance")
    if maintenance is None:
        logger.warning("realtime: no maintenance leader; changes are not pruned")
        return
    settings, pool = hub.settings, hub.pool

    async def realtime_retention(conn: AsyncConnection[Any]) -> int:
        async with pool.connection() as own:
            return await prune_changes(own, settings.realtime_retention_hours)

    maintenance.register("realtime_retention", realtime_retention)
