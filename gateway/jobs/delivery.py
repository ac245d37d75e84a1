"""One delivery attempt: ``POST`` the job to the project's endpoint, signed.

The SSRF rules run at every attempt (``ssrf.resolve``: one lookup, every address
checked), and the request goes to the checked address itself with the name in ``Host``
and TLS SNI. No redirects are followed (a 3xx fails the attempt), the answer is read
only up to ``RESULT_MAX_BYTES``, and the whole attempt is bounded by the job's
``timeoutMs``.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from gateway.jobs import rules, signing, ssrf

USER_AGENT = "easymode-gateway-jobs/1"


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status: int | None = None
    result: str | None = None
    error: str | None = None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client (loading the CA bundle costs ~35 ms)."""
    return httpx.create_ssl_context()


def make_client(concurrency: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=tls_context(),
        trust_env=False,  # no proxy from the environment: the checked address is the peer
        follow_redirects=False,
        limits=httpx.Limits(max_connections=max(1, concurrency), max_keepalive_connections=16),
        timeout=None,  # the job's own timeout bounds the attempt (asyncio.timeout below)
    )


def delivery_body(job: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "id": str(job["id"]),
            "name": job["name"],
            "payload": job["payload"],
            "attempt": job["attempts_made"],
        }
    )


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    secret: str,
    job: dict[str, Any],
    *,
    allow_private: bool,
) -> Attempt:
    timeout_s = max(0.001, job["timeout_ms"] / 1000.0)
    try:
        async with asyncio.timeout(timeout_s):
            return await _attempt(client, url, secret, job, allow_private)
    except TimeoutError:
        return Attempt(False, error=f"the endpoint did not answer within {job['timeout_ms']} ms")


async def _attempt(
    client: httpx.AsyncClient,
    url: str,
    secret: str,
    job: dict[str, Any],
    allow_private: bool,
) -> Attempt:
    try:
        target, address = await ssrf.check_url(url, allow_private)
    except ssrf.TargetRefused as exc:
        return Attempt(False, error=f"endpoint refused: {exc}")
    body = delivery_body(job)
    timestamp = str(int(time.time()))
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        signing.HEADER_ID: str(job["id"]),
        signing.HEADER_TIMESTAMP: timestamp,
        signing.HEADER_SIGNATURE: signing.signature(secret, timestamp, body),
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    request = client.build_request(
        "POST", target.url_for(address), content=body, headers=headers, extensions=extensions
    )
    try:
        response = await client.send(request, stream=True, follow_redirects=False)
    except httpx.HTTPError as exc:
        return Attempt(False, error=f"delivery failed: {type(exc).__name__}")
    try:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= rules.RESULT_MAX_BYTES:
                break  # bounded: the rest of the answer is never read
    except httpx.HTTPError:
        chunks = []
    finally:
        await response.aclose()
    text = b"".join(chunks)[: rules.RESULT_MAX_BYTES].decode("utf-8", "replace")
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(True, status=status, result=text or None)
    if 300 <= status < 400:
        return Attempt(
            False,
            status=status,
            error=f"the endpoint answered a redirect ({status}); redirects are not followed",
        )
    return Attempt(False, status=status, error=f"the endpoint answered {status}")
