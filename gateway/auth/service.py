"""The auth API's requests, from key to answer. No Starlette: the routes in
``gateway/http/auth_routes.py`` hand over headers, body and client address.

Every request is first admitted like any other keyed request (``Admitter.admit``: the key
checked in the database, the project's rate limit and daily quota counted — an auth call
costs the project one request), then the route's own work runs:

- sign-in: [admission] → [throttle + user by email] → verify in a worker thread, holding
  no pool connection → [user updated (re-hash) + session inserted];
- sign-up: [admission] → [throttle + email taken?] → hash in a thread → [user + session];
- magic-link: [admission] → [throttle + link inserted] → mail (a thread);
- magic-link/verify: [admission] → [throttle + link claimed + user + session];
- user / refresh / sign-out: [admission] → [one statement] (sessions as families,
  ``gateway/auth/sessions.py``);
- password: [admission] → [throttle + session + user] → verify the current password and
  hash the new one in a thread → [password set + other sessions ended].

Brackets are database round trips. A pool connection is never held while a password is
hashed, so 20 sign-ins at once don't starve the data routes of connections.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.admission.admitter import Admitter
from gateway.admission.decision import Admission
from gateway.auth import mail, rules, sessions, store
from gateway.auth.keys import MAX_KEY_LENGTH
from gateway.auth.passwords import Hasher
from gateway.auth.rules import AuthError
from gateway.auth.tokens import new_token, token_hash
from gateway.db.pool import acquire
from gateway.errors import GatewayError, service_unavailable
from gateway.settings import Settings

log = logging.getLogger("gateway.auth")

ALLOWED_KEY_TYPES = ("public", "server")


@dataclass
class AuthOutcome:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    project_id: str | None = None
    key_id: str | None = None
    error_code: str | None = None
    admission: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """What the route knows about the request besides its body."""

    api_key: str | None
    authorization: str | None
    ip: str | None
    user_agent: str | None


class AuthService:
    def __init__(
        self, settings: Settings, pool: AsyncConnectionPool | None, admitter: Admitter
    ) -> None:
        self.settings = settings
        self.config = settings.auth
        self.pool = pool
        self.admitter = admitter
        self.hasher = Hasher(
            self.config.hash_workers, self.config.hash_queue_max, self.config.hash_nice
        )
        self.mailer = mail.Mailer(
            self.config.smtp_url, self.config.smtp_from, self.config.smtp_timeout_s
        )

    def stats(self) -> dict[str, int]:
        return {
            **{f"hash_{k}": v for k, v in self.hasher.stats().items()},
            "mail_sent": self.mailer.sent,
            "mail_failed": self.mailer.failed,
        }

    def close(self) -> None:
        self.hasher.close()

    # --- the entry point ------------------------------------------------------------------

    async def handle(self, action: str, caller: Caller, body: bytes) -> AuthOutcome:
        out = AuthOutcome(status=200, body=b"")
        try:
            handler = getattr(self, f"_{action}")
            data = await handler(caller, body, out)
            out.body = rules.ok_body(data)
        except GatewayError as error:
            self._refused(out, error)
        except psycopg.OperationalError as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            self._refused(out, service_unavailable())
        except Exception:
            # a bug, not the caller's fault: logged with its traceback (statements carry
            # only hashes, never a token or a password), answered in the auth envelope
            log.exception("auth %s failed", action)
            self._refused(out, GatewayError("INTERNAL_ERROR", "internal error", status=500))
        out.headers.update(rules.NO_STORE)
        return out

    @staticmethod
    def _refused(out: AuthOutcome, error: GatewayError) -> None:
        if out.project_id is None and getattr(error, "project_id", None):
            out.project_id = error.project_id  # type: ignore[attr-defined]
            out.key_id = error.key_id  # type: ignore[attr-defined]
        out.admission = getattr(error, "admission", None)
        out.status = error.status
        out.body = rules.error_body(error)
        out.headers.update(error.headers)
        out.error_code = error.code

    # --- admission ---------------------------------------------------------------------------

    def _key(self, caller: Caller) -> str:
        """The project key comes from ``x-api-key`` only (Bearer is the session)."""
        key = (caller.api_key or "").strip()
        if not key:
            raise AuthError("API_KEY_REQUIRED", "API key required")
        return key[:MAX_KEY_LENGTH]

    async def _admit(
        self, conn: psycopg.AsyncConnection[Any], key: str, key_hash: str, out: AuthOutcome
    ) -> Admission:
        admission = await self.admitter.admit(conn, key, 1, key_hash=key_hash)
        out.project_id, out.key_id = admission.project_id, admission.key_id
        out.admission = "admitted"
        if admission.key_type not in ALLOWED_KEY_TYPES:
            raise AuthError("INSUFFICIENT_SCOPE", "API key not permitted")
        return admission

    def _throttle(self, kind: str, limit: int, *parts: str) -> store.Throttle:
        return store.Throttle(
            rules.throttle_bucket(kind, *parts), limit, self.config.throttle_window_s
        )

    @staticmethod
    def _ip(caller: Caller) -> str:
        return caller.ip or "unknown"

    @staticmethod
    def _ua(caller: Caller) -> str | None:
        ua = caller.user_agent
        return ua[: rules.MAX_USER_AGENT].replace("\x00", "") if ua else None

    # --- routes ------------------------------------------------------------------------------

    async def _sign_up(self, caller: Caller, body: bytes, out: AuthOutcome) -> dict[str, Any]:
        key = self._key(caller)
        creds = rules.sign_up_body(body)
        key_hash = self.admitter.check_local(key)
        async with acquire(self.pool) as conn:
            admission = await self._admit(conn, key, key_hash, out)
            project = admission.project_id
            throttle = self._throttle(
                "sign_up", self.config.sign_up_limit, project, self._ip(caller)
            )
            checked = await store.throttled_user(conn, throttle, project, creds.email)
        if not checked.allowed:
            raise rules.rate_limited("sign_up", checked.retry_after)
        if checked.row is not None:
            raise AuthError("EMAIL_IN_USE", "Email already registered")
        password_hash = await self.hasher.hash(creds.password)
        token = new_token()
        # with SMTP configured, the address is asked to prove itself: a magic link
        link_token = new_token() if self.mailer.smtp_url else None
        async with acquire(self.pool) as conn:
            row = await store.sign_up(
                conn,
                project,
                creds.email,
                password_hash,
                creds.metadata,
                token_hash(token),
                self.config.session_ttl_s,
                caller.ip,
                self._ua(caller),
                link_hash=token_hash(link_token) if link_token else None,
                link_ttl_s=self.config.magic_link_ttl_s,
            )
        if row is None:  # taken meanwhile by a concurrent sign-up
            raise AuthError("EMAIL_IN_USE", "Email already registered")
        if link_token is not None:
            link = mail.link_for(self.config.magic_link_url, link_token)
            await self.mailer.send_verification(creds.email, link, self.config.magic_link_ttl_s)
        return self._signed_in(row, token)

    async def _sign_in(self, caller: Caller, body: bytes, out: AuthOutcome) -> dict[str, Any]:
        key = self._key(caller)
        creds = rules.sign_in_body(body)
        key_hash = self.admitter.check_local(key)
        async with acquire(self.pool) as conn:
            admission = await self._admit(conn, key, key_hash, out)
            project = admission.project_id
            throttle = self._throttle(
                "sign_in", self.config.sign_in_limit, project, creds.email, self._ip(caller)
            )
            checked = await store.throttled_user(conn, throttle, project, creds.email)
        if not checked.allowed:
            raise rules.rate_limited("sign_in", checked.retry_after)
        stored = checked.row.get("password_hash") if checked.row else None
        # unknown email, no password, wrong password: the same verification, the same answer
        verdict = await self.hasher.verify(stored, creds.password)
        if not verdict.ok or checked.row is None or stored is None:
            raise AuthError("INVALID_CREDENTIALS", "Invalid credentials")
        token = new_token()
        async with acquire(self.pool) as conn:
            row = await store.sign_in(
                conn,
                str(checked.row["id"]),
                stored,
                verdict.rehash,
                token_hash(token),
                self.config.session_ttl_s,
                caller.ip,
                self._ua(caller),
            )
        if row is None:  # the password was changed or cleared while we verified
            raise AuthError("INVALID_CREDENTIALS", "Invalid credentials")
        return self._signed_in(row, token)

    async def _magic_link(self, caller: Caller, body: bytes, out: AuthOutcome) -> dict[str, Any]:
        key = self._key(caller)
        email = rules.magic_link_body(body)
        key_hash = self.admitter.check_local(key)
        token = new_token()
        async with acquire(self.pool) as conn:
            admission = await self._admit(conn, key, key_hash, out)
            project = admission.project_id
            throttle = self._throttle(
                "magic_link", self.config.magic_link_limit, project, email, self._ip(caller)
            )
            allowed, retry_after, expires_at = await store.create_magic_link(
                conn, throttle, project, email, token_hash(token), self.config.magic_link_ttl_s
            )
        if not allowed or expires_at is None:
            raise rules.rate_limited("magic_link", retry_after)
        data: dict[str, Any] = {"expiresAt": rules.iso(expires_at)}
        if self.config.magic_link_return_token:
            data["message"] = "Magic link token returned (development only)"
            data["token"] = token
            return data
        link = mail.link_for(self.config.magic_link_url, token)
        await self.mailer.send_magic_link(email, link, self.config.magic_link_ttl_s)
        data["message"] = "Magic link sent to your email"
        return data

    async def _verify(self, caller: Caller, body: bytes, out: AuthOutcome) -> dict[str, Any]:
        key = self._key(caller)
        link_token = rules.verify_body(body)
        # a live session of the same account presented with the link keeps its password
        keeper = rules.optional_bearer(caller.authorization)
        key_hash = self.admitter.check_local(key)
        session = new_token()
        async with acquire(self.pool) as conn:
            admission = await self._admit(conn, key, key_hash, out)
            project = admission.project_id
            throttle = self._throttle("verify", self.config.verify_limit, project, self._ip(caller))
            checked, live = await store.verify_magic_link(
                conn,
                throttle,
                project,
                token_hash(link_token),
                token_hash(session),
                self.config.session_ttl_s,
                caller.ip,
                self._ua(caller),
                keeper_hash=token_hash(keeper) if keeper else None,
            )
        if not checked.allowed:
            raise rules.rate_limited("verify", checked.retry_after)
        if live is None:
            raise AuthError("MAGIC_LINK_INVALID", "Magic link invalid or already used")
        if not live or checked.row is None:
            raise AuthError("MAGIC_LINK_EXPIRED", "Magic link expired")
        return self._signed_in(checked.row, session)

    async def _user(self, caller: Caller, body: bytes, out: AuthOutcome) -> dict[str, Any]:
        key = self._key(caller)
        token = rules.bearer_token(caller.authorization)
        key_hash = self.admitter.check_local(key)
        async with acquire(self.pool) as conn:
            admission = await self._admit(conn, key, key_hash, out)
            row = await sessions.session_user(conn, admission.project_id, token_hash(token))
        if row is None:
            raise AuthError("SESSION_NOT_FOUND", "Session not found")
        if not row.pop("live"):
            raise AuthError("SESSION_EXPIRED", "Session expired")
        return {"user": rules.user_json(row)}

    async def _refresh(self, caller: Caller, body: bytes, out: AuthOutcome) -> dict[str, Any]:
        key = self._key(caller)
        token = rules.bearer_token(caller.authorization)
        key_hash = self.admitter.check_local(key)
        fresh = new_token()
        async with acquire(self.pool) as conn:
            admission = await self._admit(conn, key, key_hash, out)
            result = await sessions.refresh(
                conn,
                admission.project_id,
                token_hash(token),
                token_hash(fresh),
                self.config.session_ttl_s,
                self.config.refresh_grace_s,
                caller.ip,
                self._ua(caller),
            )
        if result.reuse:
            log.warning("refresh-token reuse: a rotated token came back, its family ended")
        if result.expires_at is None:
            raise self._dead_session(result.refusal)
        return {"session": rules.session_json(fresh, result.expires_at)}

    async def _sign_out(self, caller: Caller, body: bytes, out: AuthOutcome) -> dict[str, Any]:
        """Ends the presented session's family (``scope`` ``local``, the default: an
        unknown token still answers success, as in the original) or, with ``global``, every
        session of its user — which needs the presented session to be live."""
        key = self._key(caller)
        token = rules.bearer_token(caller.authorization)
        everywhere = rules.sign_out_global(body)
        key_hash = self.admitter.check_local(key)
        async with acquire(self.pool) as conn:
            admission = await self._admit(conn, key, key_hash, out)
            state = await sessions.sign_out(
                conn, admission.project_id, token_hash(token), everywhere=everywhere
            )
        if everywhere and state != "live":
            raise self._dead_session(state)
        return {"success": True}

    async def _password(self, caller: Caller, body: bytes, out: AuthOutcome) -> dict[str, Any]:
        """Change (the current password) or reset (a magic-link session younger than
        ``sessions.RESET_WINDOW_S``, also the way back after ``gateway auth force-reset``).
        The user's other sessions end; this one stays."""
        key = self._key(caller)
        token = rules.bearer_token(caller.authorization)
        change = rules.password_body(body)
        key_hash = self.admitter.check_local(key)
        async with acquire(self.pool) as conn:
            admission = await self._admit(conn, key, key_hash, out)
            throttle = self._throttle("password", self.config.sign_in_limit, admission.project_id)
            found = await sessions.password_check(
                conn, throttle, admission.project_id, token_hash(token)
            )
        if found.state != "live" or found.checked.row is None or found.session_id is None:
            raise self._dead_session(found.state)
        if not found.checked.allowed:
            raise rules.rate_limited("password", found.checked.retry_after)
        stored = found.checked.row.get("password_hash")
        if change.current is None and not found.fresh_link:
            raise AuthError(
                "VALIDATION_ERROR",
                "currentPassword is required (or sign in by magic link to reset it)",
            )
        if change.current is not None and not found.fresh_link:
            verdict = await self.hasher.verify(stored, change.current)
            if not verdict.ok or stored is None:
                raise AuthError("INVALID_CREDENTIALS", "Invalid credentials")
        new_hash = await self.hasher.hash(change.password)
        async with acquire(self.pool) as conn:
            row = await sessions.set_password(conn, found.session_id, stored, new_hash)
        if row is None:  # signed out, or the password changed, while we hashed
            raise AuthError("SESSION_NOT_FOUND", "Session not found")
        row.pop("revoked_sessions")
        return {"user": rules.user_json(row)}

    @staticmethod
    def _dead_session(state: str | None) -> AuthError:
        """An expired session says so; a revoked, unknown or ended-family one is not found."""
        if state == "expired":
            return AuthError("SESSION_EXPIRED", "Session expired")
        return AuthError("SESSION_NOT_FOUND", "Session not found")

    @staticmethod
    def _signed_in(row: dict[str, Any], token: str) -> dict[str, Any]:
        expires_at = row["session_expires_at"]
        return {"user": rules.user_json(row), "session": rules.session_json(token, expires_at)}


ACTIONS = {
    ("POST", "sign-up"): "sign_up",
    ("POST", "sign-in"): "sign_in",
    ("POST", "magic-link"): "magic_link",
    ("POST", "magic-link/verify"): "verify",
    ("GET", "user"): "user",
    ("POST", "refresh"): "refresh",
    ("POST", "sign-out"): "sign_out",
    ("POST", "password"): "password",
}
