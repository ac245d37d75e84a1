"""Opaque bearer tokens for end-user sessions and magic links.

A token is 32 random bytes (256 bits), base64url without padding. Only its SHA-256
(lower-case hex of the UTF-8 token string) is stored or compared, so a leaked database
dump holds nothing a client could present. The data routes' admission statement hashes
the presented token with the same function before looking it up.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

TOKEN_BYTES = 32
# base64url of 32 bytes without padding is 43 characters; anything much longer is not ours
MAX_TOKEN_LENGTH = 128


def new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode("ascii")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
