"""The auth API's wire contract, pure: body parsing, validation, the envelope and the JSON
shapes of users and sessions. No database, no Starlette, no hashing here.

Every refusal is an ``AuthError`` (a ``GatewayError``) carrying the original's code, so a
malformed body can only ever become a 4xx with a known code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.tokens import MAX_TOKEN_LENGTH
from gateway.errors import GatewayError

MAX_EMAIL_LENGTH = 320
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_BYTES = 1024
MAX_METADATA_BYTES = 16 * 1024
MAX_BODY_BYTES = 32 * 1024
MAX_USER_AGENT = 512

# The original's pattern (one @, a dot in the domain, no whitespace), plus: no control
# characters (PostgreSQL text can't hold NUL, and nobody's address has a tab).
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Expires": "0"}


class AuthError(GatewayError):
    """A refusal of the auth API's own (its status from ``gateway.errors.STATUS_BY_CODE``)."""

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message, headers=headers)


# --- the envelope -----------------------------------------------------------------------


def ok_body(data: Mapping[str, Any]) -> bytes:
    return orjson.dumps({"ok": True, "data": data})


def error_body(error: GatewayError) -> bytes:
    """``{ok: false, error: {code, message}}``: the auth routes' envelope for every refusal,
    also admission's (rate limit, quota, bad key) and 503s."""
    return orjson.dumps({"ok": False, "error": {"code": error.code, "message": error.message}})


# --- bodies -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    email: str
    password: str
    metadata: dict[str, Any]


def parse_json(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise AuthError("PAYLOAD_TOO_LARGE", f"the request body exceeds {MAX_BODY_BYTES} bytes")
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        raise AuthError("VALIDATION_ERROR", "the request body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise AuthError("VALIDATION_ERROR", "the request body must be a JSON object")
    return parsed


def normalize_email(value: Any) -> str:
    """Trimmed and lower-cased, at most 320 characters, the original's pattern."""
    if value is None or value == "":
        raise AuthError("VALIDATION_ERROR", "email is required")
    if not isinstance(value, str):
        raise AuthError("VALIDATION_ERROR", "email must be a string")
    email = value.strip().lower()
    if not email:
        raise AuthError("INVALID_EMAIL", "email cannot be empty")
    if len(email) > MAX_EMAIL_LENGTH:
        raise AuthError("INVALID_EMAIL", f"email is longer than {MAX_EMAIL_LENGTH} characters")
    if _CONTROL.search(email) or not _EMAIL.fullmatch(email) or not _encodable(email):
        raise AuthError("INVALID_EMAIL", "invalid email format")
    return email


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (PostgreSQL would refuse it)
        return False
    return True


def check_password(value: Any, *, new: bool) -> str:
    """Refused BEFORE any hashing when too long (1,024 UTF-8 bytes); ``new`` passwords
    (sign-up) need 8 characters. Sign-in takes any non-empty string: imported users may
    have shorter passwords from before."""
    if value is None or value == "":
        raise AuthError("VALIDATION_ERROR", "password is required")
    if not isinstance(value, str):
        raise AuthError("VALIDATION_ERROR", "password must be a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        raise AuthError("VALIDATION_ERROR", "password is not valid unicode") from None
    if size > MAX_PASSWORD_BYTES:
        raise AuthError("VALIDATION_ERROR", f"password is longer than {MAX_PASSWORD_BYTES} bytes")
    if new and len(value) < MIN_PASSWORD_LENGTH:
        raise AuthError(
            "WEAK_PASSWORD", f"password must be at least {MIN_PASSWORD_LENGTH} characters"
        )
    return value


def check_metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AuthError("VALIDATION_ERROR", "metadata must be a JSON object")
    try:
        encoded = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):  # lone surrogates, too deep
        raise AuthError("VALIDATION_ERROR", "metadata is not valid JSON text") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise AuthError("VALIDATION_ERROR", f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    if b"\\u0000" in encoded:  # jsonb refuses NUL in strings and keys
        raise AuthError("VALIDATION_ERROR", "metadata must not contain NUL characters")
    return value


def sign_up_body(body: bytes) -> Credentials:
    parsed = parse_json(body)
    if not parsed.get("email") or not parsed.get("password"):
        raise AuthError("VALIDATION_ERROR", "email and password are required")
    email = normalize_email(parsed.get("email"))
    password = check_password(parsed.get("password"), new=True)
    return Credentials(email, password, check_metadata(parsed.get("metadata")))


def sign_in_body(body: bytes) -> Credentials:
    parsed = parse_json(body)
    if not parsed.get("email") or not parsed.get("password"):
        raise AuthError("VALIDATION_ERROR", "email and password are required")
    email = normalize_email(parsed.get("email"))
    return Credentials(email, check_password(parsed.get("password"), new=False), {})


def magic_link_body(body: bytes) -> str:
    return normalize_email(parse_json(body).get("email"))


def verify_body(body: bytes) -> str:
    token = parse_json(body).get("token")
    if token is None or token == "":
        raise AuthError("VALIDATION_ERROR", "token is required")
    if not isinstance(token, str):
        raise AuthError("VALIDATION_ERROR", "token must be a string")
    if len(token) > MAX_TOKEN_LENGTH or _CONTROL.search(token) or not _encodable(token):
        raise AuthError("MAGIC_LINK_INVALID", "magic link invalid or expired")
    return token


@dataclass(frozen=True, slots=True)
class PasswordChange:
    password: str  # the new one
    current: str | None  # None: the session must be a fresh magic-link one (reset)


def password_body(body: bytes) -> PasswordChange:
    """``{"password": new, "currentPassword": old?}``: the new password under sign-up's
    rules; the current one, when given, under sign-in's (both bounded before hashing)."""
    parsed = parse_json(body)
    password = check_password(parsed.get("password"), new=True)
    current = parsed.get("currentPassword")
    if current is None or current == "":
        return PasswordChange(password, None)
    return PasswordChange(password, check_password(current, new=False))


SIGN_OUT_SCOPES = ("local", "global")


def sign_out_global(body: bytes) -> bool:
    """``{"scope": "global"}`` ends every session of the user; no body, ``{}`` or
    ``"local"`` only the presented session's family."""
    if not body.strip():
        return False
    scope = parse_json(body).get("scope", "local")
    if scope not in SIGN_OUT_SCOPES:
        raise AuthError("VALIDATION_ERROR", "scope must be 'local' or 'global'")
    return bool(scope == "global")


def optional_bearer(authorization: str | None) -> str | None:
    """A session token when the request carries a well-formed one, else None."""
    try:
        return bearer_token(authorization)
    except AuthError:
        return None


def bearer_token(authorization: str | None) -> str:
    """The session token from ``Authorization: Bearer``; absent → 401 SESSION_REQUIRED."""
    if not authorization:
        raise AuthError("SESSION_REQUIRED", "session token required")
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise AuthError("SESSION_REQUIRED", "session token required")
    if len(value) > MAX_TOKEN_LENGTH:
        raise AuthError("SESSION_NOT_FOUND", "session not found")
    return value


# --- shapes -----------------------------------------------------------------------------


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def user_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "projectId": str(row["project_id"]),
        "email": row["email"],
        "emailVerified": bool(row["email_verified"]),
        "provider": row["provider"],
        "metadata": row["metadata"] if row["metadata"] is not None else {},
        "createdAt": iso(row["created_at"]),
        "lastSignIn": iso(row["last_sign_in"]),
    }


def session_json(token: str, expires_at: dt.datetime) -> dict[str, Any]:
    return {"token": token, "expiresAt": iso(expires_at)}


def throttle_bucket(kind: str, *parts: str) -> str:
    """The counter's key: the kind in clear (for operators), the rest hashed, so the
    throttle table holds no email addresses."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{kind}:{digest[:40]}"


def rate_limited(kind: str, retry_after: int) -> AuthError:
    what = {
        "sign_up": "sign-up attempts",
        "sign_in": "sign-in attempts",
        "magic_link": "magic link requests",
        "verify": "verification attempts",
        "password": "password change attempts",
    }.get(kind, "attempts")
    return AuthError(
        "RATE_LIMIT",
        f"Too many {what}. Please try again later.",
        headers={"Retry-After": str(max(1, retry_after))},
    )
