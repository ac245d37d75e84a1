"""Counting the SHA-256s the gateway computes of keys and session tokens (issue 23: each
hashed once per request)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway.auth import keys, tokens


def count_sha256(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """From now on (until the test ends), every input ``hash_key`` and ``token_hash``
    hash is appended to the returned list."""
    hashed: list[bytes] = []
    real_sha256 = hashlib.sha256

    class CountingHashlib:
        @staticmethod
        def sha256(data: bytes = b"", **kwargs: Any) -> Any:
            hashed.append(data)
            return real_sha256(data, **kwargs)

    monkeypatch.setattr(keys, "hashlib", CountingHashlib)
    monkeypatch.setattr(tokens, "hashlib", CountingHashlib)
    return hashed
