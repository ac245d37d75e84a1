"""The outermost ASGI layer: answers that must cost almost nothing, given before routing,
middleware and body reading.

Two of them, both for the database routes only (``POST /query``, ``POST /batch``,
``GET /schema``; everything else goes straight on):

1. **The early local deny.** A key whose project this instance knows to be over its
   limit (``gateway/admission/local_deny.py``) gets its 429 here, from the request's
   headers alone: the same status, body and headers as the pipeline's local deny (plus
   CORS headers for a browser, from the app's own CORS settings), the same request-log
   row, metrics and access-log line. Anything else — no key, a deny whose re-check with
   the database is due (the probe) — is left to the pipeline's ``check_local``.
2. **The overload gate** (``gateway/admission/gate.py``): at most ``capacity`` requests
   past this point; the others wait their turn without costing CPU, and one that can't
   get a connection within ``GATEWAY_POOL_TIMEOUT_S`` of its arrival is answered 503
   ``SERVICE_UNAVAILABLE`` with ``Retry-After: 1`` — the pool's own answer and message.
   A request let through carries its deadline (``REQUEST_DEADLINE``) to the pool, so the
   time it waited here counts against the pool timeout.

Installed by ``install(app, state, observability)``: the Starlette app's middleware
stack is built as before and wrapped, so ``create_app`` still returns the Starlette app.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from gateway.admission.admitter import Admitter
from gateway.admission.gate import Gate
from gateway.auth.bearer import credentials_from_headers
from gateway.auth.keys import hash_key
from gateway.cells.directory import HOME
from gateway.db.pool import REQUEST_DEADLINE
from gateway.errors import GatewayError, service_unavailable
from gateway.http import routes
from gateway.http.cors import GatewayCORS
from gateway.http.data import wanted_headers
from gateway.http.endpoint import new_request_id
from gateway.http.lean import Lean, hot_routes
from gateway.ops.observe import ARRIVED, Observability, access_line
from gateway.query.envelope import error_body
from gateway.query.pipeline import Outcome

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BASE = "/v1/inhouse/db"
# (method, path) → the request-log kind (the routes' own names)
GATED_ROUTES = {
    ("POST", f"{BASE}/query"): "query",
    ("POST", f"{BASE}/batch"): "batch",
    ("GET", f"{BASE}/schema"): "schema",
}
ROUTE_OF_KIND = {kind: path for (_, path), kind in GATED_ROUTES.items()}
# defaults derived from the pool plan
INFLIGHT_PER_CONNECTION = 2
WAITING_PER_CONNECTION = 64
OVERLOADED = (
    "the gateway is overloaded: too many requests are waiting for a database connection; "
    "retry shortly"
)


class Front:
    """The early local deny and the overload gate around the app's middleware stack."""

    def __init__(
        self,
        app: ASGIApp,
        state: Any,
        observability: Observability,
        lean: Lean,
        hot: dict[tuple[str, str], Route],
    ) -> None:
        self.app = app
        self.state = state
        self.observability = observability
        self.metrics = observability.metrics
        self.lean = lean
        self.cors: GatewayCORS | None = lean.cors
        # (method, path) → (the route, its request-log kind if the front gates it)
        self.hot = {key: (route, GATED_ROUTES.get(key)) for key, route in hot.items()}
        self.gate: Gate | None = None
        self.budget_s = state.settings.pool_timeout_s
        self.counts = {"early_local_deny": 0, "shed": 0}
        self.metrics.register_source("overload", self.stats)

    def stats(self) -> dict[str, float]:
        return {**(self.gate.stats() if self.gate else {}), **self.counts}

    def _gate(self) -> Gate | None:
        """Made once the pool plan is known (after the lifespan planned the pool)."""
        plan = self.state.pool_plan
        if plan is None:
            return None
        settings = self.state.settings
        capacity = settings.overload_inflight_max or INFLIGHT_PER_CONNECTION * plan.pool_max
        queue_max = (
            settings.overload_queue_max
            if settings.overload_queue_max is not None
            else WAITING_PER_CONNECTION * plan.pool_max
        )
        self.gate = Gate(capacity, queue_max, lifo_after_s=plan.timeout / 2)
        self.budget_s = plan.timeout
        return self.gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hot = self.hot.get((scope["method"], scope["path"]))
        if hot is None:
            await self.app(scope, receive, send)
            return
        route, kind = hot
        if kind is None:
            await self.lean.serve(scope, receive, send, route)
            return
        started = time.perf_counter()
        denied = self._deny_early(scope)
        if denied is not None:
            error, cell, wanted = denied
            self.counts["early_local_deny"] += 1
            await self._answer(scope, receive, send, kind, error, started, wanted, cell)
            return
        gate = self.gate or self._gate()
        if gate is None:  # not started yet: the routes answer (503 while the pool is None)
            await self.lean.serve(scope, receive, send, route)
            return
        arrived = time.monotonic()
        scope[ARRIVED] = started  # durations (metrics, log, header) include the gate's wait
        if not gate.try_enter():
            reason = gate.refusal()
            if reason is not None or not await gate.wait(self.budget_s):
                error = (
                    service_unavailable(OVERLOADED)
                    if reason == "queue_full"
                    else service_unavailable(
                        f"no database connection within {self.budget_s:g} s: the database "
                        "is overloaded or unreachable; retry shortly"
                    )
                )
                self.counts["shed"] += 1
                await self._answer(scope, receive, send, kind, error, started)
                return
        token = REQUEST_DEADLINE.set(arrived + self.budget_s)
        try:
            await self.lean.serve(scope, receive, send, route)
        finally:
            REQUEST_DEADLINE.reset(token)
            gate.leave()

    def _deny_early(self, scope: Scope) -> tuple[GatewayError, str, dict[str, str]] | None:
        """The local 429 of the cell that knows the key's project to be over its limit.

        The admitter is per cell, and a key's hash is in the local-deny table of its own
        cell only, so asking each cell that has entries needs no route: a deny costs no
        directory lookup, and a request with nothing denied anywhere costs an emptiness
        check per cell (measured with timeit, load average 5: 0.22 µs with one cell, 0.10 µs
        before cells; 0.56 µs with three)."""
        cells = self.state.cells
        if cells is None or len(cells.runtimes) <= 1:
            admitters: Iterable[tuple[str, Admitter | None]] = ((HOME, self.state.admitter),)
        else:
            admitters = ((r.name, r.admitter) for r in cells.runtimes.values())
        wanted: dict[str, str] | None = None
        key = key_hash = None
        for cell, admitter in admitters:
            if admitter is None or not admitter.local.entries:
                continue
            if wanted is None:  # the headers read and the key hashed once, for every cell
                wanted = wanted_headers(scope)
                key, _session = credentials_from_headers(wanted)
                if not key:
                    return None
                key_hash = hash_key(key)
            error = admitter.deny_early(key, key_hash)
            if error is not None:
                return error, cell, wanted
        return None

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        kind: str,
        error: GatewayError,
        started: float,
        wanted: dict[str, str] | None = None,
        cell: str = HOME,
    ) -> None:
        """The answer the routes would give for ``error`` (``_render``), with the same
        request-log row, metrics and access-log line."""
        request_id = new_request_id()
        # the body and the error's own headers, rendered once per (shared) error object
        rendered = error.rendered
        if rendered is None:
            rendered = (
                error_body(error),
                [
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in error.headers.items()
                ],
            )
            error.rendered = rendered
        body, error_raw = rendered
        outcome = Outcome(
            status=error.status,
            body=body,
            headers=error.headers,
            project_id=error.project_id,
            key_id=error.key_id,
            error_code=error.code,
            admission=error.admission,
            cell=cell,
        )
        duration_ms = (time.perf_counter() - started) * 1000
        extra = wanted if wanted is not None else wanted_headers(scope)
        client = scope.get("client")
        observability = self.observability
        observability.record_outcome(
            kind,
            outcome,
            request_id=request_id,
            duration_ms=duration_ms,
            peer=client[0] if client else None,
            forwarded_for=extra.get("x-forwarded-for"),
            user_agent=extra.get("user-agent"),
        )
        if observability.access_json:
            scope.setdefault("state", {})["gateway_log"] = {
                "request_id": request_id,
                "project_id": outcome.project_id,
                "operation": None,
                "table": None,
                "error_code": outcome.error_code,
            }
        # as starlette.responses.Response renders the routes' answer: the error's headers,
        # request id, duration, then length and type
        raw = [
            *error_raw,
            (b"x-request-id", request_id.encode("latin-1")),
            (b"x-gateway-duration-ms", f"{duration_ms:.2f}".encode("latin-1")),
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"content-type", b"application/json"),
        ]

        start = {"type": "http.response.start", "status": error.status, "headers": raw}
        end = {"type": "http.response.body", "body": body}
        if self.cors is not None and "origin" in extra:
            self.cors.decorate(raw, extra["origin"])
        await send(start)
        await send(end)
        route = ROUTE_OF_KIND[kind]
        duration = time.perf_counter() - started
        self.metrics.observe_request(route, error.status, duration)
        if observability.access_json:
            access_line(
                observability.settings.instance_id,
                scope,
                route,
                error.status,
                duration,
                len(body),
                request_id,
            )


def install(app: Starlette, state: Any, observability: Observability) -> None:
    """Wrap the app's middleware stack (built lazily by Starlette) in the ``Front``, with
    the lean path of the hot routes built from the same middleware declarations."""
    build = app.build_middleware_stack

    def build_with_front() -> ASGIApp:
        lean = Lean(app.user_middleware)
        hot = hot_routes(app.routes, routes.HOT_PATHS)
        return Front(build(), state, observability, lean, hot)

    app.build_middleware_stack = build_with_front  # type: ignore[method-assign]
