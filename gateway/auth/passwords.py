"""Password hashing: argon2id for everything new, the original's scrypt format verified.

Hashing is deliberately slow (tens of milliseconds of CPU and 19 MiB of memory), so it
never runs on the event loop: ``Hasher`` runs it on a small dedicated thread pool
(``GATEWAY_AUTH_HASH_WORKERS``). argon2-cffi and hashlib.scrypt both release the GIL while
they work, so the loop keeps serving other requests. The pool is bounded on both sides:
a few threads (CPU and memory stay predictable) and a queue limit
(``GATEWAY_AUTH_HASH_QUEUE_MAX``; beyond it the request gets a 503 instead of waiting).
The threads run at a lower CPU priority (``GATEWAY_AUTH_HASH_NICE``, default 10).

Parameters are OWASP's first recommendation for argon2id: m = 19 MiB, t = 2, p = 1.

An unknown email, a user without a password (magic link only, or reset by an admin) and
a wrong password all cost one verification of the same kind: ``verify(None, password)``
checks against a dummy hash made with the same parameters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.errors import service_unavailable

ARGON2 = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

# The original's format: scrypt$N$r$p$<salt>$<hash>. The salt is used AS ITS base64url
# TEXT (Node's scryptSync(password, saltString, 64, ...)), the hash is base64url of 64
# bytes.
SCRYPT_KEY_LEN = 64
SCRYPT_MAX_N = 1 << 20
SCRYPT_MAX_R = 32
SCRYPT_MAX_P = 16


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    # a fresh argon2id hash when the stored one is scrypt or has outdated parameters
    rehash: str | None = None


def hash_password(password: str) -> str:
    return ARGON2.hash(password)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_scrypt(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """``(n, r, p, salt bytes, hash bytes)`` of an original-format hash, or None."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    _, n_text, r_text, p_text, salt, digest = parts
    if not (n_text.isdigit() and r_text.isdigit() and p_text.isdigit()) or not salt:
        return None
    n, r, p = int(n_text), int(r_text), int(p_text)
    if not (1 < n <= SCRYPT_MAX_N and n & (n - 1) == 0 and 0 < r <= SCRYPT_MAX_R):
        return None
    if not 0 < p <= SCRYPT_MAX_P:
        return None
    try:
        expected = _b64url(digest)
    except ValueError:
        return None
    if len(expected) != SCRYPT_KEY_LEN:
        return None
    return n, r, p, salt.encode("utf-8"), expected


def is_known_format(stored: str) -> bool:
    """For imports: an argon2 PHC string or the original's scrypt format."""
    return stored.startswith("$argon2") or parse_scrypt(stored) is not None


def _verify_scrypt(stored: str, password: str) -> bool:
    parsed = parse_scrypt(stored)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    derived = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=SCRYPT_KEY_LEN,
        maxmem=256 * n * r * p + (1 << 20),
    )
    return hmac.compare_digest(derived, expected)


_dummy_lock = threading.Lock()
_dummy_hash: str | None = None


def _dummy() -> str:
    global _dummy_hash
    with _dummy_lock:
        if _dummy_hash is None:
            _dummy_hash = ARGON2.hash("not a password: equal work for unknown users")
        return _dummy_hash


def verify(stored: str | None, password: str) -> Verdict:
    """Blocking: call through ``Hasher``. Constant-time comparisons inside both libraries."""
    if not stored or not stored.startswith(("$argon2", "scrypt$")):
        with contextlib.suppress(VerificationError):
            ARGON2.verify(_dummy(), password)
        return Verdict(False)
    if stored.startswith("scrypt$"):
        if not _verify_scrypt(stored, password):
            return Verdict(False)
        return Verdict(True, rehash=ARGON2.hash(password))
    try:
        ARGON2.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return Verdict(False)
    return Verdict(
        True, rehash=ARGON2.hash(password) if ARGON2.check_needs_rehash(stored) else None
    )


def _lower_priority(niceness: int) -> None:
    """Runs in each hash thread: on Linux a thread is a task with its own nice value, so
    the hashing threads give way to the event loop (and to PostgreSQL on the same host)
    whenever the CPU is contended — a sign-in waits a little longer, a select doesn't."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


class Hasher:
    """Runs hashing on its own bounded thread pool; the event loop only awaits."""

    def __init__(self, workers: int = 2, queue_max: int = 64, niceness: int = 10) -> None:
        self.queue_max = queue_max
        self._pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="auth-hash",
            initializer=_lower_priority,
            initargs=(niceness,),
        )
        self._pending = 0
        self.hashed = 0
        self.refused = 0

    def _admit(self) -> None:
        if self._pending >= self.queue_max:
            self.refused += 1
            raise service_unavailable("too many password checks in progress; retry shortly")
        self._pending += 1

    async def hash(self, password: str) -> str:
        self._admit()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, hash_password, password
            )
        finally:
            self._pending -= 1
            self.hashed += 1

    async def verify(self, stored: str | None, password: str) -> Verdict:
        self._admit()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, verify, stored, password
            )
        finally:
            self._pending -= 1
            self.hashed += 1

    def stats(self) -> dict[str, int]:
        return {"pending": self._pending, "hashed": self.hashed, "refused": self.refused}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
