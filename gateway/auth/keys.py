"""API keys: their format, their hash, and where a request carries them.

Only the SHA-256 of a key is stored or compared; the key itself never reaches the
database, a log line or an error message.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass

PREFIX_BY_TYPE = {"public": "sheen_pk_", "server": "sheen_sk_", "admin": "sheen_ak_"}
KEY_TYPES = ("public", "server", "admin")
KEY_STATUSES = ("active", "revoked")
_ALPHABET = string.ascii_letters + string.digits
RANDOM_LENGTH = 40
VISIBLE_PREFIX_LENGTH = 12
MAX_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class NewKey:
    key: str
    prefix: str
    key_hash: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def generate_key(key_type: str) -> NewKey:
    """A fresh key: a type prefix and 40 random base62 characters (~238 bits)."""
    key = PREFIX_BY_TYPE[key_type] + "".join(
        secrets.choice(_ALPHABET) for _ in range(RANDOM_LENGTH)
    )
    return NewKey(key=key, prefix=key[:VISIBLE_PREFIX_LENGTH], key_hash=hash_key(key))


def looks_like_secret(key: str) -> bool:
    """Server and admin keys must never travel in a URL (they end up in access logs)."""
    return not key.startswith(PREFIX_BY_TYPE["public"])
