"""Delivery signatures: ``X-Sheen-Signature: v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>``.

The receiver recomputes the HMAC over the exact bytes it received and compares in
constant time; the timestamp inside the signed text lets it refuse replays.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
HEADER_ID = "X-Sheen-Job-Id"
HEADER_TIMESTAMP = "X-Sheen-Timestamp"
HEADER_SIGNATURE = "X-Sheen-Signature"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(signature(secret, timestamp, body), header)
