"""A signed admin-API client for tests: every call signs with a fresh nonce."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from gateway.control.admin_route import PREFIX
from gateway.control.signing import sign_request

SECRET = "test-admin-secret-0123456789abcdef"
OTHER_SECRET = "rotated-admin-secret-fedcba9876543210"


class AdminClient:
    def __init__(self, base_url: str, secret: str = SECRET) -> None:
        self.base_url = base_url
        self.secret = secret
        self.http = httpx.Client(timeout=30.0)

    def signed(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[str, dict[str, str], bytes]:
        """(url, headers, body) for one signed request; ``path`` is below /v1/admin."""
        content = raw if raw is not None else (b"" if body is None else orjson.dumps(body))
        target = PREFIX + path
        headers = sign_request(self.secret, method, target, content)
        headers["content-type"] = "application/json"
        return self.base_url + target, headers, content

    def send(
        self, method: str, url: str, headers: dict[str, str], content: bytes
    ) -> httpx.Response:
        return self.http.request(method, url, headers=headers, content=content)

    def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> httpx.Response:
        url, headers, content = self.signed(method, path, body, raw=raw)
        return self.send(method, url, headers, content)

    def ok(self, method: str, path: str, body: Any = None, status: int | None = None) -> Any:
        """The ``data`` of a successful call (asserts ``ok`` and the status)."""
        response = self.call(method, path, body)
        payload = response.json()
        assert response.status_code < 300 and payload["ok"] is True, (
            response.status_code,
            payload,
        )
        if status is not None:
            assert response.status_code == status, (response.status_code, payload)
        return payload["data"]

    def close(self) -> None:
        self.http.close()
