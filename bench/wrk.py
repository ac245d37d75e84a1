"""Driving ``wrk`` against several instances at once and reading its figures back.

wrk takes one URL, so the bench runs one wrk process per instance, all at the same
time, each with the same Lua script: it builds every request (the key header, a random
primary key) and, in ``done``, prints one JSON line with the totals and the latency
percentiles. Requests/s add up across the processes; p50 is the request-weighted mean
of the processes' p50s and p99 the worst of their p99s (wrk can't merge histograms).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.framework import BASE

# Every script ends with this: wrk calls ``done`` once, and the figures come back as one
# JSON line that ``run`` parses (scenarios with their own requests append it too).
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""

LUA_TEMPLATE = r"""
local keys = {%(keys)s}
local mode = "%(mode)s"
local max_id = %(max_id)d
local path = "%(path)s"
local sequential = %(sequential)s
local next_key = 0

init = function(args)
  math.randomseed(os.time() + %(seed)d)
end

local function body()
  if mode == "pk" then
    return string.format('{"query":{"operation":"select","table":"items",' ..
      '"columns":["id","title","score"],' ..
      '"filters":[{"column":"id","op":"eq","value":%%d}]}}', math.random(max_id))
  elseif mode == "rows100" then
    return string.format('{"query":{"operation":"select","table":"items",' ..
      '"columns":["id","title","score"],' ..
      '"filters":[{"column":"id","op":"gt","value":%%d}],' ..
      '"sorts":[{"column":"id","direction":"asc"}],"limit":100}}',
      math.random(0, math.max(0, max_id - 100)))
  elseif mode == "insert" then
    return '{"query":{"operation":"insert","table":"items",' ..
      '"data":{"title":"wrk insert","score":1},"returning":["id"]}}'
  end
end

request = function()
  local key
  if sequential then
    next_key = next_key %% #keys + 1
    key = keys[next_key]
  else
    key = keys[math.random(#keys)]
  end
  return wrk.format("POST", path,
    {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body())
end

%(done)s"""


def write_script(
    path: Path,
    *,
    keys: list[str],
    mode: str,
    max_id: int = 1000,
    seed: int = 0,
    sequential: bool = False,
) -> Path:
    """``sequential``: walk the keys in order (a warm-up that reaches every project)."""
    assert mode in ("pk", "rows100", "insert")
    lua_keys = ",".join(f'"{k}"' for k in keys)
    path.write_text(
        LUA_TEMPLATE
        % {
            "keys": lua_keys,
            "mode": mode,
            "max_id": max_id,
            "path": f"{BASE}/query",
            "seed": seed,
            "sequential": "true" if sequential else "false",
            "done": LUA_DONE,
        }
    )
    return path


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    rps: float  # the sum of each wrk's requests / its own duration
    ok_rps: float  # the same, counting only 2xx answers
    processes: list[dict[str, Any]]
    max_ms: float = 0.0  # the slowest answer of any process


def split_connections(total: int, parts: int) -> list[int]:
    """``total`` connections over ``parts`` wrk processes, as even as integers allow
    (16 over 3: 6, 5, 5)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run(
    wrk_bin: str,
    urls: list[str],
    script: Path,
    *,
    seconds: float,
    connections: int | list[int] = 16,
    threads: int = 1,
) -> WrkResult:
    """``connections``: per process, or one figure per URL (e.g. 67, 67, 66 = 200)."""
    per_url = connections if isinstance(connections, list) else [connections] * len(urls)
    procs = [
        subprocess.Popen(
            [
                wrk_bin,
                "-t",
                str(threads),
                "-c",
                str(conns),
                "-d",
                f"{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for url, conns in zip(urls, per_url, strict=True)
    ]
    parsed = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        line = next((ln for ln in out.splitlines() if ln.startswith("BENCHJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no figures (exit {p.returncode}):\n{out[-2000:]}")
        parsed.append(json.loads(line.removeprefix("BENCHJSON ")))
    requests = sum(r["requests"] for r in parsed)
    seconds_run = max(r["duration_us"] for r in parsed) / 1e6
    p50 = sum(r["p50_us"] * r["requests"] for r in parsed) / requests / 1000 if requests else 0.0
    return WrkResult(
        requests=requests,
        seconds=seconds_run,
        non2xx=sum(r["non2xx"] for r in parsed),
        socket_errors=sum(r["connect"] + r["read"] + r["write"] + r["timeout"] for r in parsed),
        p50_ms=round(p50, 3),
        p99_ms=round(max(r["p99_us"] for r in parsed) / 1000, 3),
        rps=round(sum(r["requests"] / (r["duration_us"] / 1e6) for r in parsed), 1),
        ok_rps=round(
            sum((r["requests"] - r["non2xx"]) / (r["duration_us"] / 1e6) for r in parsed), 1
        ),
        processes=parsed,
        max_ms=round(max(r.get("max_us", 0) for r in parsed) / 1000, 3),
    )


def combine(results: list[WrkResult]) -> WrkResult:
    """Several consecutive runs of the same load as one (interleaved rounds)."""
    seconds = sum(r.seconds for r in results)
    requests = sum(r.requests for r in results)
    non2xx = sum(r.non2xx for r in results)
    p50 = sum(r.p50_ms * r.requests for r in results) / requests if requests else 0.0
    return WrkResult(
        requests=requests,
        seconds=seconds,
        non2xx=non2xx,
        socket_errors=sum(r.socket_errors for r in results),
        p50_ms=round(p50, 3),
        p99_ms=max(r.p99_ms for r in results),
        rps=round(sum(r.rps * r.seconds for r in results) / seconds, 1) if seconds else 0.0,
        ok_rps=round(sum(r.ok_rps * r.seconds for r in results) / seconds, 1) if seconds else 0.0,
        processes=[p for r in results for p in r.processes],
        max_ms=max(r.max_ms for r in results),
    )
