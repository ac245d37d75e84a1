"""The contract's error codes and their HTTP statuses, in one table for every surface.

Everything below the routes raises ``GatewayError``; the routes render it in their
surface's envelope (``Outcome.refuse`` in ``gateway/query/pipeline.py``: the data API's
``{"data": null, "error": {...}, "status": N}``, the auth API's and the jobs API's
``{"ok": false, ...}``). Messages are written for the API's users: they never carry SQL,
stack traces or internals.

A refusal carries its facts as declared fields, never as attributes patched on later:
``project_id`` and ``key_id`` once admission recognised the key (the request log still
counts the request as the project's), ``admission`` when admission itself refused it
(``rate_limited``, ``quota_exceeded``, ``local_deny``) and ``rendered``, the wire form
of an answer object shared by many requests (the HTTP front renders it once).
"""

from __future__ import annotations

from typing import Any

STATUS_BY_CODE: dict[str, int] = {
    # keys and projects
    "INVALID_API_KEY": 401,
    "EXPIRED_API_KEY": 401,
    "REVOKED_API_KEY": 401,
    "PROJECT_SUSPENDED": 403,
    "INSUFFICIENT_SCOPES": 403,
    "SECRET_KEY_IN_URL": 400,
    # metadata and permissions
    "TABLE_NOT_FOUND": 404,
    "COLUMN_NOT_FOUND": 400,
    "TABLE_NOT_READABLE": 403,
    "TABLE_NOT_WRITABLE": 403,
    "COLUMN_NOT_READABLE": 403,
    "COLUMN_NOT_WRITABLE": 403,
    "SENSITIVE_COLUMN_ACCESS": 403,
    # admission
    "RATE_LIMIT_EXCEEDED": 429,
    "QUOTA_EXCEEDED": 429,
    "DATABASE_QUOTA_EXCEEDED": 429,
    "STORAGE_QUOTA_EXCEEDED": 429,
    "REQUEST_QUOTA_EXCEEDED": 429,
    "BANDWIDTH_QUOTA_EXCEEDED": 429,
    "MULTIPLE_QUOTAS_EXCEEDED": 429,
    "TOO_MANY_SUBSCRIPTIONS": 429,
    # the query contract
    "PAYLOAD_TOO_LARGE": 413,
    "INVALID_QUERY": 400,
    "INVALID_OPERATION": 400,
    "INVALID_TABLE": 400,
    "INVALID_COLUMN": 400,
    "INVALID_FILTER": 400,
    "INVALID_VALUE": 400,
    "FILTERLESS_MUTATION": 400,
    "ROW_LIMIT_EXCEEDED": 400,
    "RESPONSE_TOO_LARGE": 400,
    # PostgreSQL errors mapped to the contract
    "UNIQUE_VIOLATION": 409,
    "FOREIGN_KEY_VIOLATION": 409,
    "NOT_NULL_VIOLATION": 400,
    "CHECK_VIOLATION": 400,
    "QUERY_TIMEOUT": 504,
    "QUERY_FAILED": 500,
    # the gateway itself
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "CONNECTION_FAILED": 503,
    "SERVICE_UNAVAILABLE": 503,
    "INTERNAL_ERROR": 500,
    "NOT_IMPLEMENTED": 501,
    # the auth API (docs/auth.md); its "INSUFFICIENT_SCOPE" and "RATE_LIMIT" are its own
    "API_KEY_REQUIRED": 401,
    "INSUFFICIENT_SCOPE": 403,
    "VALIDATION_ERROR": 400,
    "INVALID_EMAIL": 400,
    "WEAK_PASSWORD": 400,
    "EMAIL_IN_USE": 409,
    "INVALID_CREDENTIALS": 401,
    "MAGIC_LINK_INVALID": 401,
    "MAGIC_LINK_EXPIRED": 401,
    "SESSION_REQUIRED": 401,
    "SESSION_NOT_FOUND": 401,
    "SESSION_EXPIRED": 401,
    "RATE_LIMIT": 429,
}


class GatewayError(Exception):
    """An answer the gateway gives on purpose: a contract code, a status, a message."""

    code: str
    message: str
    status: int
    details: Any
    hint: str | None
    headers: dict[str, str]
    # the refused request's project and key, once admission recognised the key
    project_id: str | None
    key_id: str | None
    # how admission refused it: "rate_limited", "quota_exceeded" or "local_deny"
    admission: str | None
    # the HTTP front's wire form (body, raw headers) of an answer shared by many requests
    rendered: Any

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        details: Any = None,
        hint: str | None = None,
        headers: dict[str, str] | None = None,
        project_id: str | None = None,
        key_id: str | None = None,
        admission: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS_BY_CODE.get(code, 400)
        self.details = details
        self.hint = hint
        self.headers = headers or {}
        self.project_id = project_id
        self.key_id = key_id
        self.admission = admission
        self.rendered = None

    def to_error(self) -> dict[str, Any]:
        """The ``error`` object of the contract's response body."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        if self.hint is not None:
            error["hint"] = self.hint
        return error

    def __repr__(self) -> str:
        return f"GatewayError({self.code!r}, {self.message!r}, status={self.status})"


def service_unavailable(
    message: str = "the database is unavailable, retry shortly",
) -> GatewayError:
    """The one answer to overload and outages: 503 at once, with ``Retry-After: 1``."""
    return GatewayError("SERVICE_UNAVAILABLE", message, status=503, headers={"Retry-After": "1"})
