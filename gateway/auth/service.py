"""The auth API's requests, from key to answer. No Starlette: the routes in
``gateway/http/auth_routes.py`` hand over headers, body and client address.

Every request is first admitted through the data routes' own call
(``Pipeline.admitted``: the local deny, the key checked in the database, the
project's rate limit and daily quota counted — an auth call costs the project one
request — the pool share and the retry on a lost connection), then the route's own work
runs, its first statement on the admission's connection:

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

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from gateway.admission.decision import Admission
from gateway.auth import mail, rules, sessions, store
from gateway.auth.keys import MAX_KEY_LENGTH
from gateway.auth.passwords import Hasher
from gateway.auth.rules import AuthError
from gateway.auth.tokens import new_token, token_hash
from gateway.db.pool import acquire
from gateway.errors import GatewayError
from gateway.query.pipeline import Conn, Outcome, Pipeline
from gateway.settings import Settings

log = logging.getLogger("gateway.auth")

ALLOWED_KEY_TYPES = ("public", "server")


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """What the route knows about the request besides its body."""

    api_key: str | None
    authorization: str | None
    ip: str | None
    user_agent: str | None


class AuthService:
    def __init__(
        self, settings: Settings, pipeline: Pipeline, *, hasher: Hasher | None = None
    ) -> None:
        """``hasher``: share one password-hashing pool between the services of an
        instance's cells (gateway/cells/runtime.py); the owner closes it."""
        self.settings = settings
        self.config = settings.auth
        self.pipeline = pipeline
        self.pool = pipeline.pool
        self.owns_hasher = hasher is None
        self.hasher = hasher or Hasher(
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
        if self.owns_hasher:
            self.hasher.close()

    # --- the entry point ------------------------------------------------------------------

    async def handle(self, action: str, caller: Caller, body: bytes) -> Outcome:
        out = Outcome(status=200, body=b"")
        try:
            handler = getattr(self, f"_{action}")
            data = await handler(caller, body, out)
            out.body = rules.ok_body(data)
        except (GatewayError, psycopg.OperationalError) as error:
            out.refuse_exception(error, rules.error_body)
        except Exception:
            # a bug, not the caller's fault: logged with its traceback (statements carry
            # only hashes, never a token or a password), answered in the auth envelope
            log.exception("auth %s failed", action)
            out.refuse(
                GatewayError("INTERNAL_ERROR", "internal error", status=500), rules.error_body
            )
        out.headers.update(rules.NO_STORE)
        return out

    # --- admission ---------------------------------------------------------------------------

    def _key(self, caller: Caller) -> str:
        """The project key comes from ``x-api-key`` only (Bearer is the session)."""
        key = (caller.api_key or "").strip()
        if not key:
            raise AuthError("API_KEY_REQUIRED", "API key required")
        return key[:MAX_KEY_LENGTH]

    async def _admitted(
        self, key: str, out: Outcome, first: Callable[[Conn, str], Awaitable[T]]
    ) -> tuple[str, T]:
        """``(project_id, first(conn, project_id))``: admitted through the data routes'
        call, then the route's first statement on the admission's connection (no
        connection is held once this returns). Only public and server keys may call."""
        found: list[tuple[str, T]] = []

        async def work(conn: Conn, admission: Admission, out: Outcome) -> None:
            out.admission = "admitted"
            if admission.key_type not in ALLOWED_KEY_TYPES:
                raise AuthError("INSUFFICIENT_SCOPE", "API key not permitted")
            project = admission.project_id
            found[:] = [(project, await first(conn, project))]  # a retried run replaces it

        # the auth API's answers carry no rate-limit headers (as in the original)
        await self.pipeline.admitted(
            key, cost=1, work=work, envelope=None, out=out, rate_headers=False
        )
        return found[0]

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

    async def _sign_up(self, caller: Caller, body: bytes, out: Outcome) -> dict[str, Any]:
        key = self._key(caller)
        creds = rules.sign_up_body(body)

        async def first(conn: Conn, project: str) -> store.Checked:
            throttle = self._throttle(
                "sign_up", self.config.sign_up_limit, project, self._ip(caller)
            )
            return await store.throttled_user(conn, throttle, project, creds.email)

        project, checked = await self._admitted(key, out, first)
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

    async def _sign_in(self, caller: Caller, body: bytes, out: Outcome) -> dict[str, Any]:
        key = self._key(caller)
        creds = rules.sign_in_body(body)

        async def first(conn: Conn, project: str) -> store.Checked:
            throttle = self._throttle(
                "sign_in", self.config.sign_in_limit, project, creds.email, self._ip(caller)
            )
            return await store.throttled_user(conn, throttle, project, creds.email)

        _, checked = await self._admitted(key, out, first)
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

    async def _magic_link(self, caller: Caller, body: bytes, out: Outcome) -> dict[str, Any]:
        key = self._key(caller)
        email = rules.magic_link_body(body)
        token = new_token()

        async def first(conn: Conn, project: str) -> tuple[bool, int, dt.datetime | None]:
            throttle = self._throttle(
                "magic_link", self.config.magic_link_limit, project, email, self._ip(caller)
            )
            return await store.create_magic_link(
                conn, throttle, project, email, token_hash(token), self.config.magic_link_ttl_s
            )

        _, (allowed, retry_after, expires_at) = await self._admitted(key, out, first)
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

    async def _verify(self, caller: Caller, body: bytes, out: Outcome) -> dict[str, Any]:
        key = self._key(caller)
        link_token = rules.verify_body(body)
        # a live session of the same account presented with the link keeps its password
        keeper = rules.optional_bearer(caller.authorization)
        session = new_token()

        async def first(conn: Conn, project: str) -> tuple[store.Checked, bool | None]:
            throttle = self._throttle("verify", self.config.verify_limit, project, self._ip(caller))
            return await store.verify_magic_link(
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

        _, (checked, live) = await self._admitted(key, out, first)
        if not checked.allowed:
            raise rules.rate_limited("verify", checked.retry_after)
        if live is None:
            raise AuthError("MAGIC_LINK_INVALID", "Magic link invalid or already used")
        if not live or checked.row is None:
            raise AuthError("MAGIC_LINK_EXPIRED", "Magic link expired")
        return self._signed_in(checked.row, session)

    async def _user(self, caller: Caller, body: bytes, out: Outcome) -> dict[str, Any]:
        key = self._key(caller)
        token = rules.bearer_token(caller.authorization)

        async def first(conn: Conn, project: str) -> dict[str, Any] | None:
            return await sessions.session_user(conn, project, token_hash(token))

        _, row = await self._admitted(key, out, first)
        if row is None:
            raise AuthError("SESSION_NOT_FOUND", "Session not found")
        if not row.pop("live"):
            raise AuthError("SESSION_EXPIRED", "Session expired")
        return {"user": rules.user_json(row)}

    async def _refresh(self, caller: Caller, body: bytes, out: Outcome) -> dict[str, Any]:
        key = self._key(caller)
        token = rules.bearer_token(caller.authorization)
        fresh = new_token()

        async def first(conn: Conn, project: str) -> sessions.Refreshed:
            return await sessions.refresh(
                conn,
                project,
                token_hash(token),
                token_hash(fresh),
                self.config.session_ttl_s,
                self.config.refresh_grace_s,
                caller.ip,
                self._ua(caller),
            )

        _, result = await self._admitted(key, out, first)
        if result.reuse:
            log.warning("refresh-token reuse: a rotated token came back, its family ended")
        if result.expires_at is None:
            raise self._dead_session(result.refusal)
        return {"session": rules.session_json(fresh, result.expires_at)}

    async def _sign_out(self, caller: Caller, body: bytes, out: Outcome) -> dict[str, Any]:
        """Ends the presented session's family (``scope`` ``local``, the default: an
        unknown token still answers success, as in the original) or, with ``global``, every
        session of its user — which needs the presented session to be live."""
        key = self._key(caller)
        token = rules.bearer_token(caller.authorization)
        everywhere = rules.sign_out_global(body)

        async def first(conn: Conn, project: str) -> str | None:
            return await sessions.sign_out(conn, project, token_hash(token), everywhere=everywhere)

        _, state = await self._admitted(key, out, first)
        if everywhere and state != "live":
            raise self._dead_session(state)
        return {"success": True}

    async def _password(self, caller: Caller, body: bytes, out: Outcome) -> dict[str, Any]:
        """Change (the current password) or reset (a magic-link session younger than
        ``sessions.RESET_WINDOW_S``, also the way back after ``gateway auth force-reset``).
        The user's other sessions end; this one stays."""
        key = self._key(caller)
        token = rules.bearer_token(caller.authorization)
        change = rules.password_body(body)

        async def first(conn: Conn, project: str) -> sessions.PasswordCheck:
            throttle = self._throttle("password", self.config.sign_in_limit, project)
            return await sessions.password_check(conn, throttle, project, token_hash(token))

        _, found = await self._admitted(key, out, first)
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
