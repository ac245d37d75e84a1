"""HMAC v2 request signing for the admin API: the original platform's scheme, kept as is.

The signed text is five lines joined by ``\\n``::

    METHOD            upper case
    PATH[?QUERY]      the query sorted by name, ``?`` only when there is a query
    TIMESTAMP         Unix seconds, the ``x-sheen-timestamp`` header verbatim
    NONCE             the ``x-sheen-nonce`` header verbatim
    BODY              the raw request body (empty for GET)

and the signature is the lower-case hex HMAC-SHA256 of it under the shared secret,
sent as ``x-sheen-sig-v2``. The query is canonicalized the way the original does it
(``URLSearchParams``): parsed as ``application/x-www-form-urlencoded``, stably sorted by
name (a repeated name keeps its order), and serialized again (space as ``+``; only
letters, digits and ``*-._`` left unescaped).

This module is pure (no I/O): ``sign_request`` is the client's half, ``verify`` the
server's. The nonce's single use is the caller's job (``gateway.control.nonces``),
checked only after the signature holds, so unsigned traffic can't fill the nonce table.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote_plus

SIGNATURE_HEADER = "x-sheen-sig-v2"
TIMESTAMP_HEADER = "x-sheen-timestamp"
NONCE_HEADER = "x-sheen-nonce"

TIMESTAMP_TOLERANCE_S = 120
# A nonce is remembered for 10 minutes after its timestamp (the original's TTL): far
# beyond the ±120 s window, so even instances whose clocks disagree by minutes can't
# accept a nonce twice.
NONCE_TTL_S = 600
NONCE_RE = re.compile(r"^[A-Za-z0-9._~+/=:-]{8,128}$")
SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}$")
TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")


class SignatureError(Exception):
    """The request is not signed correctly. ``reason`` is for the server's log only: the
    client always gets the same 401, which says nothing about which part failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    timestamp: int
    nonce: str


def _form_encode(value: str) -> str:
    # WHATWG application/x-www-form-urlencoded: like quote_plus, but '~' is escaped and
    # '*' is not
    return quote_plus(value, safe="*").replace("~", "%7E")


def canonical_query(query: str) -> str:
    """The query as the original's ``URLSearchParams`` round trip would print it, sorted."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    pairs.sort(key=lambda pair: pair[0])  # stable: repeated names keep their order
    return "&".join(f"{_form_encode(k)}={_form_encode(v)}" for k, v in pairs)


def canonical_string(
    method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    canonical = canonical_query(query)
    target = f"{path}?{canonical}" if canonical else path
    head = "\n".join((method.upper(), target, timestamp, nonce, ""))
    return head.encode() + body


def signature(
    secret: str, method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes
) -> str:
    message = canonical_string(method, path, query, timestamp, nonce, body)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_request(
    secret: str,
    method: str,
    path_and_query: str,
    body: bytes | str = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The three headers that sign one request, for clients and tests.

    ``path_and_query`` is the request target as sent (``/v1/admin/projects?limit=5``);
    ``body`` must be exactly the bytes sent. Each call draws a fresh nonce: a signed
    request can be sent once.

    >>> headers = sign_request("s3cret", "GET", "/v1/admin/projects?limit=5")
    >>> sorted(headers)
    ['x-sheen-nonce', 'x-sheen-sig-v2', 'x-sheen-timestamp']
    """
    raw = body.encode() if isinstance(body, str) else body
    path, _, query = path_and_query.partition("?")
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    return {
        SIGNATURE_HEADER: signature(secret, method, path, query, ts, nonce, raw),
        TIMESTAMP_HEADER: ts,
        NONCE_HEADER: nonce,
    }


def verify(
    secrets_: tuple[str, ...],
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> Verified:
    """Check the headers' form, the timestamp window and the signature under any of the
    configured secrets (rotation), every comparison in constant time. Raises
    ``SignatureError``; the nonce's single use is checked afterwards by the caller."""
    sig = headers.get(SIGNATURE_HEADER)
    ts = headers.get(TIMESTAMP_HEADER)
    nonce = headers.get(NONCE_HEADER)
    if sig is None or ts is None or nonce is None:
        raise SignatureError("missing signature headers")
    if not TIMESTAMP_RE.match(ts):
        raise SignatureError("malformed timestamp")
    if not NONCE_RE.match(nonce):
        raise SignatureError("malformed nonce")
    if not SIGNATURE_RE.match(sig):
        raise SignatureError("malformed signature")
    current = time.time() if now is None else now
    if abs(current - int(ts)) > TIMESTAMP_TOLERANCE_S:
        raise SignatureError("timestamp outside the window")
    matched = False
    for secret in secrets_:
        expected = signature(secret, method, path, query, ts, nonce, body)
        # no early exit: every secret is tried, so timing doesn't tell which one matched
        matched |= hmac.compare_digest(expected.encode(), sig.encode())
    if not matched:
        raise SignatureError("bad signature")
    return Verified(timestamp=int(ts), nonce=nonce)
