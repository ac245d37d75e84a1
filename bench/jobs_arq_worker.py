"""The Redis contender of the ``jobs`` bench: an arq worker whose job POSTs to the receiver.

Run as ``python -m bench.jobs_arq_worker`` with ``BENCH_REDIS_PORT`` and
``BENCH_ARQ_MAX_JOBS`` set.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from arq.connections import RedisSettings
from arq.worker import run_worker


async def startup(ctx: dict[str, Any]) -> None:
    ctx["http"] = httpx.AsyncClient(timeout=30.0, trust_env=False)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()


async def deliver(ctx: dict[str, Any], url: str, seq: int) -> int:
    response = await ctx["http"].post(url, content=f'{{"payload":{{"seq":{seq}}}}}'.encode())
    return response.status_code


class WorkerSettings:
    functions = [deliver]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings(
        host="127.0.0.1", port=int(os.environ.get("BENCH_REDIS_PORT", "6379"))
    )
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "16"))
    poll_delay = 0.005
    keep_result = 0
    handle_signals = True


if __name__ == "__main__":
    run_worker(WorkerSettings)  # type: ignore[arg-type]
