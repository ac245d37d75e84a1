"""Requests for the route fuzzer, one strategy per group of routes, and how to send one.

Each strategy draws a whole HTTP request (method, path, query string, headers, body)
from the route's own schema and from mutations of it (``tests.support.fuzz_values``):
the data routes from the query contract's strategies, the auth and jobs routes from their
documented fields, the admin routes from the OpenAPI document the admin API serves (and
signed, so most reach the handler). ``Targets`` holds what makes a request get past
the door: real keys, a session, ids that exist.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import strategies as st

from gateway.control.signing import sign_request
from gateway.query.contract import FILTER_OPS
from tests.support.contract_strategies import queries, shaped_queries
from tests.support.fuzz_values import (
    SHAPED_STRINGS,
    body_bytes,
    content_types,
    from_schema,
    header_text,
    hostile_json,
    hostile_scalars,
    hostile_text,
    mutated,
)

DATA = "/v1/inhouse/db"
AUTH = "/v1/inhouse/auth"
JOBS = "/v1/inhouse/jobs"
SEND_TIMEOUT_S = 30.0


@dataclass
class Targets:
    """What exists on the gateway under test: keys, a session, ids, the admin secret."""

    urls: list[str]
    project_id: str
    public_key: str
    server_key: str
    session: str  # the data routes' session
    auth_session: str  # the auth routes' own: their sign-out and refresh end it
    user_id: str
    job_id: str
    schedule_id: str
    doomed_schedule_id: str  # the one DELETE may remove (PATCH keeps schedule_id)
    admin_secret: str
    admin_project: str
    admin_key_id: str
    openapi: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"Targets({self.urls})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis prints it with every failure: keep it short


@dataclass
class FuzzRequest:
    method: str
    path: str  # already percent-encoded
    query: str = ""  # raw, already percent-encoded
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sign_with: str | None = None  # the admin secret: signed just before sending

    @property
    def target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 600 else self.body[:600] + b"...(truncated)"
        return (
            f"{self.method} {self.target}\nheaders: {self.headers!r}\n"
            f"body ({len(self.body)} bytes): {body!r}"
        )


def send(client: httpx.Client, base_url: str, request: FuzzRequest) -> httpx.Response:
    """Send it (signed when it asks to be) and read the answer; an event stream that
    opened is closed after its headers, since the status is the answer that matters."""
    # h11 refuses a header value with spaces around it: the server never sees those
    headers = {k: v.strip(" \t").encode("latin-1") for k, v in request.headers.items()}
    if request.sign_with is not None:
        signed = sign_request(request.sign_with, request.method, request.target, request.body)
        headers.update({k: v.encode() for k, v in signed.items()})
    built = client.build_request(
        request.method, base_url + request.target, headers=headers, content=request.body
    )
    response = client.send(built, stream=True)
    try:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
    finally:
        response.close()
    return response


# --- pieces ------------------------------------------------------------------------------

BAD_SEGMENTS = [
    "", "%00", "%FF", "%C3%28", "..", "%2E%2E", "%2F", "a%2Fb", "x" * 2000, "%25", "null",
    "-1", "0", "12345678-1234-5678-1234-567812345678", "%F0%9F%98%80", "%E2%80%A8", "%20",
]  # fmt: skip


def segment(valid: str) -> st.SearchStrategy[str]:
    """A path segment: the real id, a percent-encoded junk string, or a known bad one."""
    return st.one_of(
        st.just(valid),
        st.just(valid),
        hostile_text.map(lambda s: urllib.parse.quote(s.encode("utf-8", "surrogatepass"), "")),
        st.sampled_from(BAD_SEGMENTS),
    )


def _quote(value: str) -> str:
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


@st.composite
def query_string(draw: st.DrawFn, known: dict[str, st.SearchStrategy[str]]) -> str:
    """``name=value&...`` from the route's parameters (valid or junk values), unknown and
    repeated names, and raw escapes that decode to bad UTF-8."""
    name_strategy = st.sampled_from(sorted(known)) | hostile_text if known else hostile_text
    names = draw(st.lists(name_strategy, max_size=5))
    pairs = []
    for name in names:
        value_strategy = known.get(name, hostile_text)
        value = draw(value_strategy | hostile_text | st.sampled_from(SHAPED_STRINGS))
        pairs.append(f"{_quote(name)}={_quote(value)}")
    if draw(st.integers(0, 7)) == 0:
        pairs.append(draw(st.sampled_from(["%FF=%FE", "a=%00", "b=%C3", "=", "&&", "c", "%"])))
    return "&".join(pairs)


def credentials(
    targets: Targets, *, server: bool = False, session: str | None = None
) -> st.SearchStrategy[dict[str, str]]:
    """Headers: the right key (and session) most of the time, else missing or junk ones,
    plus hostile values in the headers the routes read."""
    bearer = f"Bearer {session or targets.session}"
    key = st.sampled_from(
        [targets.server_key] * (3 if server else 1) + [targets.public_key] * (1 if server else 3)
    )
    # the right key 4 times in 5: most requests should get past the door
    right_or_junk = st.integers(0, 4).flatmap(lambda i: header_text if i == 0 else key)
    return st.fixed_dictionaries(
        {"x-api-key": right_or_junk},
        optional={
            "authorization": st.sampled_from([bearer] * 3) | header_text,
            "x-forwarded-for": header_text | st.just("1.2.3.4, 10.0.0.1"),
            "last-event-id": header_text,
            "user-agent": header_text,
            "content-type": content_types,
            "accept": header_text,
        },
    )


@st.composite
def json_request(
    draw: st.DrawFn,
    method: str,
    path: str,
    valid: st.SearchStrategy[Any],
    headers: st.SearchStrategy[dict[str, str]],
    query: str = "",
) -> FuzzRequest:
    """A request whose body is ``valid``'s value, a mutation of it, or any JSON at all."""
    value = draw(valid)
    how = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "any"]))
    if how == "mutated":
        value = draw(mutated(value))
    elif how == "any":
        value = draw(hostile_json)
    sent_headers = draw(headers)
    sent_headers.setdefault("content-type", "application/json")
    return FuzzRequest(method, path, query, sent_headers, draw(body_bytes(value)))


# --- the data routes ---------------------------------------------------------------------

# the columns of todos and notes (tests/support/tables.py, owner_rows.py): every type
REALTIME_COLUMNS = [
    *["id", "title", "done", "tags", "meta", "created_at", "ext_id", "price", "due"],
    *["priority", "rank", "ratio", "scores", "user_id", "body", "secret"],
]
GOOD_FILTER = st.fixed_dictionaries(
    {
        "column": st.sampled_from(REALTIME_COLUMNS),
        "op": st.sampled_from(sorted(FILTER_OPS)),
        "value": hostile_json | st.lists(hostile_scalars, max_size=3),
    }
)
FILTER_JSON = st.lists(
    st.fixed_dictionaries(
        {"column": st.sampled_from(REALTIME_COLUMNS) | hostile_text},
        optional={
            "op": st.sampled_from(["eq", "neq", "gt", "in", "is"]) | hostile_text,
            "value": hostile_json,
        },
    ),
    max_size=3,
)


@st.composite
def data_requests(draw: st.DrawFn, targets: Targets) -> FuzzRequest:
    route = draw(st.sampled_from(["query", "batch", "schema", "realtime", "ticket", "other"]))
    headers = credentials(targets)
    if route == "other":  # a wrong method on a route, or a path that is no route
        method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
        base = draw(st.sampled_from([DATA, AUTH, JOBS, "/v1/admin", "/v1", ""]))
        known = ["query", "batch", "schema", "realtime", "realtime/ticket", "health"]
        path = base + "/" + draw(st.sampled_from(known) | segment("query"))
        return draw(json_request(method, path, st.just({}), headers))
    if route == "query":
        body = st.builds(lambda q: {"query": q}, shaped_queries | queries)
        return draw(json_request("POST", f"{DATA}/query", body, headers))
    if route == "batch":
        body = st.builds(lambda qs: {"queries": qs}, st.lists(shaped_queries, max_size=4))
        return draw(json_request("POST", f"{DATA}/batch", body, headers))
    if route == "ticket":
        return draw(json_request("POST", f"{DATA}/realtime/ticket", st.just({}), headers))
    if route == "schema":
        return FuzzRequest("GET", f"{DATA}/schema", draw(query_string({})), draw(headers))
    params = {
        "table": st.sampled_from(["todos", "notes", "nope"]),
        "filters": FILTER_JSON.map(json.dumps),
        "since": st.sampled_from(["0", "1:2", "abc", "-1", "9" * 40]),
        "apikey": st.sampled_from([targets.public_key, targets.server_key, "x" * 43]),
        "ticket": hostile_text,
    }
    if draw(st.booleans()):  # any query string
        return FuzzRequest("GET", f"{DATA}/realtime", draw(query_string(params)), draw(headers))
    # a well-formed one (a real table, filters on its columns) with hostile filter values,
    # so the stream gets as far as compiling its filters against the table's types
    table = draw(st.sampled_from(["todos", "notes"]))
    filters = draw(st.lists(GOOD_FILTER, min_size=1, max_size=3))
    query = f"table={table}&filters={_quote(json.dumps(filters))}"
    return FuzzRequest("GET", f"{DATA}/realtime", query, draw(headers))


# --- the auth routes ---------------------------------------------------------------------

# the module's user, a new address each time (so sign-up gets to the hash and the insert),
# or junk
EMAILS = st.one_of(
    st.sampled_from(["fuzz@example.com", "Fuzz@Example.COM"]),
    st.uuids().map(lambda u: f"{u.hex[:12]}@example.com"),
    hostile_text,
)
PASSWORDS = st.one_of(
    st.just("correct horse battery"),  # the module's user's, and a strong one for sign-up
    st.just("correct horse battery"),
    st.sampled_from(["short", "p" * 80, "p" * 2000]),
    hostile_text,
)
AUTH_BODIES = {
    "sign-up": st.fixed_dictionaries(
        {"email": EMAILS, "password": PASSWORDS}, optional={"metadata": hostile_json}
    ),
    "sign-in": st.fixed_dictionaries({"email": EMAILS, "password": PASSWORDS}),
    "magic-link": st.fixed_dictionaries({"email": EMAILS}),
    "magic-link/verify": st.fixed_dictionaries({"token": hostile_text}),
    "refresh": st.just({}),
    "sign-out": st.fixed_dictionaries({}, optional={"scope": st.sampled_from(["global", "x"])}),
    "password": st.fixed_dictionaries(
        {"password": PASSWORDS}, optional={"currentPassword": PASSWORDS}
    ),
}


@st.composite
def auth_requests(draw: st.DrawFn, targets: Targets) -> FuzzRequest:
    headers = credentials(targets, session=targets.auth_session)
    action = draw(st.sampled_from([*sorted(AUTH_BODIES), "user", "junk"]))
    if action == "user":
        method = draw(st.sampled_from(["GET", "GET", "POST", "DELETE"]))
        return FuzzRequest(method, f"{AUTH}/user", draw(query_string({})), draw(headers))
    if action == "junk":
        path = AUTH + "/" + draw(segment("sign-in"))
        method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]))
        return draw(json_request(method, path, st.just({}), headers))
    return draw(json_request("POST", f"{AUTH}/{action}", AUTH_BODIES[action], headers))


# --- the jobs API ------------------------------------------------------------------------

JOB_NAMES = st.sampled_from(["send.email", "a", "n" * 100, "sys:x", "bad name"]) | hostile_text
ENQUEUE = st.fixed_dictionaries(
    {"name": JOB_NAMES, "payload": st.just({"user": 1}) | hostile_json},
    optional={
        "delay": st.sampled_from(["30s", "15m", "1h", "7d", "8d", 0, 1500, -1]) | hostile_text,
        "runAt": st.sampled_from(
            ["2030-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2030-01-01", "2030-01-01T00:00"]
        )
        | hostile_text,
        "timeoutMs": st.integers(-10, 2_000_000),
        "maxAttempts": st.integers(-1, 200),
        "concurrencyKey": hostile_text,
        "idempotencyKey": hostile_text,
    },
)
SCHEDULE = st.fixed_dictionaries(
    {"name": JOB_NAMES, "cron": st.sampled_from(["* * * * *", "0 9 * * 1", "*/5 * * * * *"])},
    optional={
        "payload": hostile_json,
        "timezone": st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]) | hostile_text,
        "active": st.booleans(),
        "description": hostile_text,
    },
)
LIST_PARAMS = {
    "name": JOB_NAMES,
    "status": st.sampled_from(["pending", "failed", "all", "nope"]),
    "limit": st.sampled_from(["1", "100", "101", "0", "-1", "²", "\uff11", "1.5", "9" * 30]),
    "offset": st.sampled_from(["0", "100000", "100001", "-1", "³", "٣", "9" * 30]),
    "orderBy": st.sampled_from(["createdAt", "runAt", "finishedAt", "id"]),
    "orderDir": st.sampled_from(["asc", "desc", "DESC", "up"]),
}


@st.composite
def jobs_requests(draw: st.DrawFn, targets: Targets) -> FuzzRequest:
    headers = credentials(targets, server=True)
    job = draw(segment(targets.job_id))
    schedule = draw(segment(targets.schedule_id))
    route = draw(
        st.sampled_from(["enqueue", "list", "get", "cancel", "retry", "schedules", "schedule"])
    )
    if route == "enqueue":
        return draw(json_request("POST", JOBS, ENQUEUE, headers))
    if route == "list":
        return FuzzRequest("GET", JOBS, draw(query_string(LIST_PARAMS)), draw(headers))
    if route == "get":
        return FuzzRequest("GET", f"{JOBS}/{job}", "", draw(headers))
    if route in ("cancel", "retry"):
        return draw(json_request("POST", f"{JOBS}/{job}/{route}", st.just({}), headers))
    if route == "schedules":
        if draw(st.booleans()):
            return FuzzRequest("GET", f"{JOBS}/schedules", draw(query_string({})), draw(headers))
        return draw(json_request("POST", f"{JOBS}/schedules", SCHEDULE, headers))
    if draw(st.booleans()):
        doomed = draw(segment(targets.doomed_schedule_id))
        return FuzzRequest("DELETE", f"{JOBS}/schedules/{doomed}", "", draw(headers))
    partial = SCHEDULE.map(lambda s: {k: v for k, v in s.items() if k != "name"})
    return draw(json_request("PATCH", f"{JOBS}/schedules/{schedule}", partial, headers))


# --- the admin API -----------------------------------------------------------------------


def admin_operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) for every route of the admin API's document."""
    return [
        (method.upper(), path, operation)
        for path, methods in sorted(openapi["paths"].items())
        for method, operation in sorted(methods.items())
    ]


@st.composite
def admin_requests(draw: st.DrawFn, targets: Targets) -> FuzzRequest:
    """A route of the OpenAPI document with its path parameters, query parameters and
    body drawn from the document's schemas; signed 9 times in 10, so most reach the
    handler (an unsigned one must be a clean 401)."""
    method, template, operation = draw(st.sampled_from(admin_operations(targets.openapi)))
    defs = targets.openapi["components"]["schemas"]
    ids = {
        "project": targets.admin_project,
        "key_id": targets.admin_key_id,
        "table": "todos",
        "user_id": targets.user_id,
        "job_id": targets.job_id,
    }
    path = template
    for name, valid in ids.items():
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", draw(segment(valid)))
    params = {
        p["name"]: from_schema(p.get("schema", {}), defs).map(str)
        for p in operation.get("parameters", [])
        if p.get("in") == "query"
    }
    query = draw(query_string(params))
    headers = draw(st.fixed_dictionaries({}, optional={"content-type": content_types}))
    headers.setdefault("content-type", "application/json")
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    body = b""
    if content is not None:
        valid = from_schema(content["schema"], defs)
        how = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "any"]))
        value = draw(valid)
        if how == "mutated":
            value = draw(mutated(value))
        elif how == "any":
            value = draw(hostile_json)
        body = draw(body_bytes(value))
    elif draw(st.integers(0, 4)) == 0:
        body = draw(body_bytes(draw(hostile_json)))
    signed = draw(st.integers(0, 9)) > 0
    return FuzzRequest(method, path, query, headers, body, targets.admin_secret if signed else None)
