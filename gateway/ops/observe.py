"""Per-request observation as a plain ASGI middleware: request metrics for every HTTP
request and, with ``GATEWAY_ACCESS_LOG=json``, one JSON line per request on the
``gateway.access`` logger.

The route label is the matched route's path template (``scope["route"]``, set by the
router), or ``unmatched`` — never the raw path, so a scan of random URLs can't create
new series.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from gateway.ops.looplag import LoopLagMonitor
from gateway.ops.maintenance import ConnectionSampler, Maintenance, install_default_jobs
from gateway.ops.metrics import Metrics
from gateway.ops.request_log import LogRecord, RequestLog, client_ip
from gateway.quotas import dbsize
from gateway.quotas.bandwidth import BandwidthMeter
from gateway.settings import Settings

access_logger = logging.getLogger("gateway.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def configure_access_log() -> None:
    """Give ``gateway.access`` a stdout handler that prints the bare JSON line."""
    if access_logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


# scope key: perf_counter() when the HTTP front (gateway/http/front.py) let the request
# through; the one clock every duration of a request starts from
ARRIVED = "gateway.arrived"


def arrived_at(scope: Scope) -> float:
    """When the request arrived: at the HTTP front's overload gate if it waited there
    (that wait is part of its duration), else now."""
    arrived = scope.get(ARRIVED)
    return arrived if isinstance(arrived, float) else time.perf_counter()


class ObserveMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        settings: Settings,
        bandwidth: BandwidthMeter | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        # quotas: body bytes of answers that carry X-Project-Id (set only after admission),
        # counted here, OUTSIDE the gzip middleware: the bytes sent, after compression
        self.bandwidth = bandwidth
        self.instance_id = settings.instance_id
        self.access_json = settings.access_log == "json"
        self.reads_ids = self.access_json or bandwidth is not None
        if self.access_json:
            configure_access_log()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = arrived_at(scope)
        status = 500
        size = 0
        request_id: str | None = None
        project_id: str | None = None
        meter = self.bandwidth

        async def observe_send(message: Message) -> None:
            nonlocal status, size, request_id, project_id
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if self.reads_ids:
                    request_id, project_id = response_ids(message.get("headers") or ())
            elif message["type"] == "http.response.body":
                n = len(message.get("body") or b"")
                size += n
                if project_id is not None and meter is not None:
                    meter.add(project_id, n)  # each chunk as sent (SSE streams too)
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        finally:
            self.finish(scope, status, started, size, request_id)

    def finish(
        self, scope: Scope, status: int, started: float, size: int, request_id: str | None
    ) -> None:
        """The request's metrics and access line, once its answer is sent (or failed)."""
        duration = time.perf_counter() - started
        route = route_label(scope)
        self.metrics.observe_request(route, status, duration)
        if self.access_json:
            access_line(self.instance_id, scope, route, status, duration, size, request_id)


def response_ids(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(X-Request-Id, X-Project-Id) of an answer's raw headers: the access line's id and
    the project whose bandwidth the body counts against (set only after admission)."""
    request_id: str | None = None
    project_id: str | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-request-id":
            request_id = value.decode("latin-1")
        elif lowered == b"x-project-id":
            project_id = value.decode("latin-1")
    return request_id, project_id


def access_line(
    instance_id: str,
    scope: Scope,
    route: str,
    status: int,
    duration: float,
    size: int,
    request_id: str | None,
) -> None:
    """One JSON line on ``gateway.access`` (also written by the HTTP front for the answers
    it gives before the middleware: the early local deny and the overload gate's 503)."""
    try:
        headers = dict(scope.get("headers") or ())
        client = scope.get("client")
        state = scope.get("state") or {}
        log_info = state.get("gateway_log") if isinstance(state, dict) else None
        line: dict[str, Any] = {
            "ts": time.time(),
            "instance": instance_id,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "bytes": size,
            "client": client[0] if client else None,
            "user_agent": headers.get(b"user-agent", b"").decode("latin-1") or None,
            "request_id": request_id,
        }
        if isinstance(log_info, dict):
            line.update(log_info)
        access_logger.info(orjson.dumps(line, default=str).decode())
    except Exception:  # pragma: no cover - logging must never fail a request
        logging.getLogger("gateway").exception("access log line failed")


class Observability:
    """The instance's observability pieces, created with the app and started once the
    pool is open: metrics, the request log, the maintenance leader and its jobs.

    Other components find them in ``GatewayState.extras``: ``metrics`` (register a stats
    source), ``maintenance`` (register a job), ``request_log`` and ``ready_checks``
    (append ``(name, check)``; ``check()`` returns a bool or an awaitable of one).
    """

    def __init__(self, settings: Settings, extras: dict[str, Any]) -> None:
        self.settings = settings
        self.access_json = settings.access_log == "json"
        self.metrics = Metrics(settings)
        self.request_log = RequestLog(settings, None)
        self.maintenance = Maintenance(settings, None)
        self.sampler = ConnectionSampler()
        self.loop_lag = LoopLagMonitor(self.metrics.loop_lag.observe)
        install_default_jobs(self.maintenance, self.sampler)
        # quotas: bandwidth batched per instance; database size sampled by the leader
        self.bandwidth = BandwidthMeter(settings, None)
        self.db_size = dbsize.install(self.maintenance, settings.db_size_sample_s)
        self.metrics.register_source("bandwidth", self.bandwidth.stats)
        self.metrics.register_source("db_size", self.db_size.stats)
        extras["bandwidth"] = self.bandwidth
        stale_after = 3 * max(15.0, self.maintenance.interval_s)
        self.metrics.register_source("request_log", self.request_log.stats)
        self.metrics.register_source("maintenance", self.maintenance.stats)
        self.metrics.register_source("db_connections", lambda: self.sampler.current(stale_after))
        # a project's request-log rows go to its own cell's log (set by the app: the
        # log of a remote cell by name, None for home or an unknown cell)
        self.cell_request_log: Callable[[str], RequestLog | None] = lambda name: None
        extras["observability"] = self
        extras["metrics"] = self.metrics
        extras["request_log"] = self.request_log
        extras["maintenance"] = self.maintenance
        extras.setdefault("ready_checks", [])

    def start(self, pool: Any) -> None:
        self.metrics.register_source("pool", pool.get_stats)
        self.request_log.pool = pool
        self.maintenance.pool = pool
        self.request_log.start()
        self.maintenance.start()
        self.bandwidth.pool = pool
        self.bandwidth.start()
        self.loop_lag.start()

    async def stop_background(self) -> None:
        """Stop the maintenance loop and the loop-lag sampler (first on shutdown)."""
        await self.maintenance.stop()
        await self.loop_lag.stop()

    async def stop_request_log(self) -> None:
        """Flush and stop the request log and the bandwidth meter (last, just before the
        pool closes)."""
        await self.bandwidth.stop()
        await self.request_log.stop()

    def record_outcome(
        self,
        kind: str,
        outcome: Any,
        *,
        request_id: str,
        duration_ms: float,
        peer: str | None,
        forwarded_for: str | None,
        user_agent: str | None,
    ) -> None:
        """After a query, batch, schema or realtime-opening request: count the admission
        outcome and, when the key was validated (the outcome names a project), queue one
        request-log row. O(1), never raises."""
        try:
            self.metrics.observe_cell(outcome.cell, outcome.status, duration_ms / 1000.0)
            admission = admission_outcome(outcome)
            if admission is not None:
                self.metrics.count_admission(admission)
            if outcome.project_id is None:
                return  # the key was never validated: nothing to attribute the row to
            if kind == "batch":
                method, path, table = "BATCH", "/db/batch", None
            elif kind == "schema":
                method, path, table = "SCHEMA", "/db/schema", None
            elif kind == "realtime":  # opening a stream (its lifetime is not a request)
                method, path, table = "REALTIME", "/db/realtime", outcome.table
            elif kind == "ticket":  # a stream's single-use ticket
                method, path, table = "TICKET", "/db/realtime/ticket", None
            elif kind == "jobs":  # the jobs API: its HTTP method and path
                method, path, table = outcome.operation or "GET", outcome.path or "/jobs", None
            else:
                table = outcome.table
                method = outcome.operation or "QUERY"
                path = f"/db/{table}" if table else "/db/query"
            log = self.cell_request_log(outcome.cell) or self.request_log
            log.record(
                LogRecord(
                    method=method,
                    path=path,
                    status_code=outcome.status,
                    duration_ms=duration_ms,
                    project_id=outcome.project_id,
                    api_key_id=outcome.key_id,
                    request_id=request_id,
                    table_name=table,
                    error_code=outcome.error_code,
                    response_size_bytes=len(outcome.body),
                    row_count=outcome.row_count,
                    client_ip=client_ip(peer, forwarded_for, self.settings.trusted_proxies),
                    user_agent=user_agent,
                    instance_id=self.settings.instance_id,
                )
            )
        except Exception:  # pragma: no cover - observation must never fail a request
            logging.getLogger("gateway").exception("recording the request failed")


KEY_ERRORS = frozenset(
    {"INVALID_API_KEY", "REVOKED_API_KEY", "EXPIRED_API_KEY", "PROJECT_SUSPENDED"}
)


def admission_outcome(outcome: Any) -> str | None:
    """admitted, rate_limited, quota_exceeded, unavailable, local_deny or invalid_key —
    from the pipeline's outcome (an explicit ``outcome.admission`` wins)."""
    explicit = getattr(outcome, "admission", None)
    if isinstance(explicit, str):
        return explicit
    code = outcome.error_code
    if code == "RATE_LIMIT_EXCEEDED":
        return "rate_limited"
    if code in ("REQUEST_QUOTA_EXCEEDED", "QUOTA_EXCEEDED"):
        return "quota_exceeded"
    if code in KEY_ERRORS:
        return "invalid_key"
    if outcome.project_id is None:
        return "unavailable" if code == "SERVICE_UNAVAILABLE" else None
    return "admitted"
