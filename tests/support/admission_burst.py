"""A separate OS process that fires concurrent admissions (exactness across processes).

``python -m tests.support.admission_burst URL KEY --requests N --concurrency C`` opens its
own pool, prints ``ready`` and waits for a line on stdin (the parent sends it once every
burst is ready, so they all start together however long connecting took), runs N
admissions with C in flight, and prints ONE JSON object: counts per outcome and the
Admitter's stats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter

from psycopg_pool import AsyncConnectionPool

from gateway.admission.admitter import Admitter
from gateway.errors import GatewayError
from gateway.settings import Settings


async def burst(args: argparse.Namespace) -> dict[str, object]:
    settings = Settings(
        database_url=args.url,
        rate_limit_window_s=args.window_s,
        rate_limit_algorithm=args.algorithm,
        admission_timeout_ms=args.timeout_ms,
    )
    admitter = Admitter(settings)
    outcomes: Counter[str] = Counter()
    async with AsyncConnectionPool(
        args.url,
        min_size=args.concurrency,
        max_size=args.concurrency,
        kwargs={"autocommit": True},
        open=False,
    ) as pool:
        await pool.wait(timeout=30)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the parent's go
        semaphore = asyncio.Semaphore(args.concurrency)

        async def one() -> None:
            async with semaphore:
                try:
                    async with pool.connection() as conn:
                        await admitter.admit(conn, args.key, args.cost)
                    outcomes["admitted"] += 1
                except GatewayError as exc:
                    outcomes[exc.code] += 1

        await asyncio.gather(*(one() for _ in range(args.requests)))
    return {"outcomes": dict(outcomes), "stats": admitter.stats()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--cost", type=int, default=1)
    parser.add_argument("--window-s", type=int, default=3600)
    parser.add_argument("--algorithm", default="fixed")
    parser.add_argument("--timeout-ms", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(burst(args))), flush=True)


if __name__ == "__main__":
    main()
