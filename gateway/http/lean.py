"""The lean path of the hot data routes: the route's handler called straight from the
HTTP front, with CORS, compression and observation done inline.

Through the generic stack a ``POST /query`` crossed seven ASGI layers
(``ServerErrorMiddleware``, ``ObserveMiddleware``, ``CORSMiddleware``, ``GZipMiddleware``,
``ExceptionMiddleware``, the router's linear scan of every route, the route's
exception wrapper), each a coroutine with its own ``send`` closure and header objects: a
quarter of the CPU of a select by primary key. Here the front finds the route by an exact
``(method, path)`` lookup and ``Lean.serve`` gives the same answer:

- the handler gets a Starlette ``Request`` (routes are unchanged) and ``scope["route"]``
  is the matched ``Route``, as the router sets it (the metrics' route label);
- an answer under the gzip threshold (a select's usually is) is sent as is, decorated by
  the same CORS rule as the stack (``GatewayCORS.decorate``) and observed by the same
  ``ObserveMiddleware.finish``, bandwidth counted per body as sent;
- a larger answer goes through the stack's own middleware objects (observe → CORS →
  gzip, built from the app's middleware declarations), so compression — including its
  thread offload of big bodies — is Starlette's, not a copy;
- an HTTPException is the app's ``http_error``; any other exception is what
  ``ServerErrorMiddleware`` does: observed as a 500, logged, answered 500
  ``INTERNAL_ERROR`` without a traceback (if nothing was sent yet), and re-raised for the
  server's own log.

Everything else (other routes, preflights, HEAD, other methods) takes the full stack.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.cors import GatewayCORS
from gateway.http.data import DataAnswer, to_response, wanted_headers
from gateway.http.endpoint import http_error, unexpected_error
from gateway.http.routes import DATA_ANSWERS
from gateway.ops.observe import ObserveMiddleware, arrived_at, response_ids

# scope key: the handler's answer, for the middleware objects that send a large one
RESPONSE = "gateway.response"
START = "http.response.start"


async def _send_response(scope: Scope, receive: Receive, send: Send) -> None:
    response: Response = scope.pop(RESPONSE)
    await response(scope, receive, send)


def _instance(middleware: Iterable[Middleware], cls: type, app: ASGIApp) -> Any:
    """The app's declared ``cls`` middleware, built again around ``app`` (same options)."""
    for declared in middleware:
        if isinstance(declared.cls, type) and issubclass(declared.cls, cls):
            return declared.cls(app, *declared.args, **declared.kwargs)
    raise LookupError(f"the app declares no {cls.__name__}")


def hot_routes(routes: Iterable[BaseRoute], paths: Iterable[str]) -> dict[tuple[str, str], Route]:
    """``(method, path)`` → the app's own ``Route`` for each hot path (HEAD, which
    Starlette adds to GET routes, stays with the router)."""
    wanted = set(paths)
    table: dict[tuple[str, str], Route] = {}
    for route in routes:
        if isinstance(route, Route) and route.path in wanted:
            for method in route.methods or ():
                if method != "HEAD":
                    table[(method, route.path)] = route
    return table


class Lean:
    """Serves a hot route's request; built once per app from its middleware declarations."""

    def __init__(self, middleware: list[Middleware]) -> None:
        # the stack's order, outermost first: observe → CORS → gzip → the answer
        self.gzip = _instance(middleware, GZipMiddleware, _send_response)
        self.cors: GatewayCORS = _instance(middleware, GatewayCORS, self.gzip)
        self.observe: ObserveMiddleware = _instance(middleware, ObserveMiddleware, self.cors)
        self.gzip_minimum: int = self.gzip.minimum_size

    async def serve(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        scope["route"] = route
        observe = self.observe
        started = arrived_at(scope)
        observed = response_started = False
        try:
            answer_for = DATA_ANSWERS.get(route.path)
            if answer_for is not None:
                answer = await answer_for(scope, receive)
            else:
                try:
                    response = await route.endpoint(Request(scope, receive))
                except HTTPException as exc:
                    response = http_error(exc)
                answer = self._from_response(response, scope)
            body = answer.body
            if len(body) >= self.gzip_minimum:
                # the middleware objects send and observe it, exactly as in the stack
                scope[RESPONSE] = to_response(answer)
                observed = True

                async def tracked_send(message: Message) -> None:
                    nonlocal response_started
                    response_started = response_started or message["type"] == START
                    await send(message)

                await observe(scope, receive, tracked_send)
                return
            raw = answer.raw_headers
            self.cors.decorate(raw, answer.origin)
            status = answer.status
            observed = response_started = True
            try:
                await send({"type": START, "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": body})
                if answer.project_id is not None and observe.bandwidth is not None:
                    observe.bandwidth.add(answer.project_id, len(body))
            finally:
                observe.finish(scope, status, started, len(body), answer.request_id)
        except Exception as exc:
            if not observed:
                observe.finish(scope, 500, started, 0, None)
            answer_500 = unexpected_error(Request(scope, receive), exc)
            if not response_started:
                await answer_500(scope, receive, send)
            raise

    def _from_response(self, response: Response, scope: Scope) -> DataAnswer:
        """A route's ``Response`` as the lean path sends it."""
        raw = response.raw_headers
        request_id, project_id = response_ids(raw) if self.observe.reads_ids else (None, None)
        return DataAnswer(
            response.status_code,
            response.body,
            raw,
            wanted_headers(scope).get("origin"),
            request_id,
            project_id,
        )
