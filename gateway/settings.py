"""Every ``DATABASE_*`` and ``GATEWAY_*`` variable, parsed and validated once.

Settings flow into ``create_app(settings)`` instead of living in module globals, so one
test process can run several differently configured apps. An invalid value stops the
start-up with one line that names the variable (``SettingsError``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

T = TypeVar("T")

Pooler = Literal["none", "transaction"]
RateLimitAlgorithm = Literal["fixed", "sliding"]
AccessLog = Literal["off", "json"]


class SettingsError(ValueError):
    """A configuration value that can't be used; the message is one line for the operator."""


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    database_direct_url: str = ""
    instance_id: str = field(default_factory=_default_instance_id)

    # the query API
    cors_origins: tuple[str, ...] = ("*",)
    statement_timeout_ms: int = 10_000
    max_body_bytes: int = 256 * 1024
    # row JSON one request may answer, a batch counted as a whole (docs/query-api.md)
    max_response_bytes: int = 4 * 1024 * 1024

    # admission
    rate_limit_algorithm: RateLimitAlgorithm = "fixed"
    rate_limit_window_s: int = 60
    admission_timeout_ms: int = 1000
    admission_enabled: bool = True  # bench-only switch (GATEWAY_BENCH_DISABLE_ADMISSION)

    # metadata cache and listener
    metadata_cache_max_projects: int = 10_000
    metadata_ttl_s: float = 60.0
    metadata_degraded_ttl_s: float = 5.0
    listener_ping_s: float = 30.0

    # connection budget and pool
    db_pooler: Pooler = "none"
    instances: int = 1
    db_max_connections: int | None = None
    db_reserved_connections: int | None = None
    db_admin_connections: int = 3
    pool_max: int | None = None
    pool_min: int = 1
    pool_timeout_s: float = 2.0
    # one project's most pool connections at once; None: default_share(pool_max)
    pool_max_per_project: int | None = None
    pool_max_waiting: int | None = None
    pool_max_idle_s: float = 60.0
    pool_max_lifetime_s: float = 1800.0

    # request log and observability
    log_flush_ms: int = 250
    log_buffer_max: int = 50_000
    log_retention_days: int = 30
    request_log_enabled: bool = True  # bench-only switch (GATEWAY_BENCH_DISABLE_REQUEST_LOG)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    access_log: AccessLog = "off"
    maintenance_interval_s: float = 15.0

    # realtime
    realtime_retention_hours: float = 24.0
    realtime_poll_max_ms: int = 250
    realtime_queue_max: int = 1000
    realtime_max_streams_per_project: int = 100
    realtime_heartbeat_s: float = 15.0
    realtime_send_timeout_s: float = 10.0
    realtime_revalidate_s: float = 30.0

    # admin API (issue 15): HMAC secrets, several for rotation; empty = the API is off.
    # Never in repr: settings may be logged.
    admin_hmac_secrets: tuple[str, ...] = field(default=(), repr=False)
    # overload: the gate in front of the database routes (gateway/admission/gate.py); None = derived
    # from the pool plan (2 × pool_max in flight, 64 × pool_max waiting)
    overload_inflight_max: int | None = None
    overload_queue_max: int | None = None
    # coalesced admission (issue 16 part 1, gateway/admission/coalescer.py): every admission
    # waiting at one moment goes in one statement, at most this many statements in flight
    admission_coalesce: bool = True
    admission_statements_max: int = 1
    # end-user auth (docs/auth.md): its own group of GATEWAY_AUTH_* / GATEWAY_SMTP_* values
    auth: AuthSettings = field(default_factory=lambda: AuthSettings())

    # quotas (plans, bandwidth, database size: gateway/quotas, docs/quotas.md)
    bandwidth_flush_ms: int = 1000
    db_size_sample_s: float = 60.0
    # background jobs (gateway/jobs/)
    jobs_concurrency: int = 10
    jobs_per_project: int = 5
    jobs_allow_private_targets: bool = False
    jobs_retention_days: float = 7.0
    jobs_lease_s: float = 30.0
    jobs_poll_s: float = 1.0
    jobs_cron_tick_s: float = 1.0

    @property
    def direct_url(self) -> str:
        """LISTEN, migrations and session locks never go through a transaction pooler."""
        return self.database_direct_url or self.database_url

    @property
    def application_name(self) -> str:
        return f"gateway:{self.instance_id}"[:63]

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, development: bool = False
    ) -> Settings:
        """``development``: the defaults of ``gateway dev`` (``make run``), where the app
        under development runs on this machine — a job receiver on loopback or a private
        address is admitted unless GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS says otherwise."""
        env = os.environ if environ is None else environ
        r = _Reader(env)
        settings = cls(
            database_url=r.str("DATABASE_URL", ""),
            database_direct_url=r.str("DATABASE_DIRECT_URL", ""),
            instance_id=r.str("GATEWAY_INSTANCE_ID", "") or _default_instance_id(),
            cors_origins=r.list("GATEWAY_CORS_ORIGINS", ("*",)),
            statement_timeout_ms=r.int("GATEWAY_STATEMENT_TIMEOUT_MS", 10_000, minimum=1),
            max_response_bytes=r.int("GATEWAY_MAX_RESPONSE_BYTES", 4 * 1024 * 1024, minimum=1024),
            rate_limit_algorithm=r.choice(
                "GATEWAY_RATE_LIMIT_ALGORITHM", "fixed", ("fixed", "sliding")
            ),
            rate_limit_window_s=r.int("GATEWAY_RATE_LIMIT_WINDOW_S", 60, minimum=1),
            admission_timeout_ms=r.int("GATEWAY_ADMISSION_TIMEOUT_MS", 1000, minimum=1),
            admission_enabled=not r.bool("GATEWAY_BENCH_DISABLE_ADMISSION", False),
            metadata_cache_max_projects=r.int(
                "GATEWAY_METADATA_CACHE_MAX_PROJECTS", 10_000, minimum=1
            ),
            metadata_ttl_s=r.float("GATEWAY_METADATA_TTL_S", 60.0, minimum=0.0),
            metadata_degraded_ttl_s=r.float("GATEWAY_METADATA_DEGRADED_TTL_S", 5.0, minimum=0.0),
            listener_ping_s=r.float("GATEWAY_LISTENER_PING_S", 30.0, minimum=0.1),
            db_pooler=r.choice(
                "GATEWAY_DB_POOLER", "none", ("none", "session", "transaction")
            ).replace("session", "none"),
            instances=r.int("GATEWAY_INSTANCES", 1, minimum=1),
            db_max_connections=r.optional_int("GATEWAY_DB_MAX_CONNECTIONS", minimum=1),
            db_reserved_connections=r.optional_int("GATEWAY_DB_RESERVED_CONNECTIONS", minimum=0),
            db_admin_connections=r.int("GATEWAY_DB_ADMIN_CONNECTIONS", 3, minimum=0),
            pool_max=r.optional_int("GATEWAY_POOL_MAX", minimum=1),
            pool_min=r.int("GATEWAY_POOL_MIN", 1, minimum=0),
            pool_timeout_s=r.float("GATEWAY_POOL_TIMEOUT_S", 2.0, minimum=0.01),
            pool_max_per_project=r.optional_int("GATEWAY_POOL_MAX_PER_PROJECT", minimum=1),
            pool_max_waiting=r.optional_int("GATEWAY_POOL_MAX_WAITING", minimum=0),
            pool_max_idle_s=r.float("GATEWAY_POOL_MAX_IDLE_S", 60.0, minimum=0.1),
            pool_max_lifetime_s=r.float("GATEWAY_POOL_MAX_LIFETIME_S", 1800.0, minimum=1.0),
            log_flush_ms=r.int("GATEWAY_LOG_FLUSH_MS", 250, minimum=1),
            log_buffer_max=r.int("GATEWAY_LOG_BUFFER_MAX", 50_000, minimum=1),
            log_retention_days=r.int("GATEWAY_LOG_RETENTION_DAYS", 30, minimum=1),
            request_log_enabled=not r.bool("GATEWAY_BENCH_DISABLE_REQUEST_LOG", False),
            trusted_proxies=r.networks("GATEWAY_TRUSTED_PROXIES"),
            access_log=r.choice("GATEWAY_ACCESS_LOG", "off", ("off", "json")),
            maintenance_interval_s=r.float("GATEWAY_MAINTENANCE_INTERVAL_S", 15.0, minimum=0.05),
            realtime_retention_hours=r.float("GATEWAY_REALTIME_RETENTION_HOURS", 24.0, minimum=0.0),
            realtime_poll_max_ms=r.int("GATEWAY_REALTIME_POLL_MAX_MS", 250, minimum=1),
            realtime_queue_max=r.int("GATEWAY_REALTIME_QUEUE_MAX", 1000, minimum=1),
            realtime_max_streams_per_project=r.int(
                "GATEWAY_REALTIME_MAX_STREAMS_PER_PROJECT", 100, minimum=1
            ),
            realtime_heartbeat_s=r.float("GATEWAY_REALTIME_HEARTBEAT_S", 15.0, minimum=0.05),
            realtime_send_timeout_s=r.float("GATEWAY_REALTIME_SEND_TIMEOUT_S", 10.0, minimum=0.05),
            realtime_revalidate_s=r.float("GATEWAY_REALTIME_REVALIDATE_S", 30.0, minimum=0.05),
            admin_hmac_secrets=_admin_secrets(r.list("GATEWAY_ADMIN_HMAC_SECRET", ())),
            overload_inflight_max=r.optional_int("GATEWAY_OVERLOAD_INFLIGHT_MAX", minimum=1),
            overload_queue_max=r.optional_int("GATEWAY_OVERLOAD_QUEUE_MAX", minimum=0),
            admission_coalesce=r.bool("GATEWAY_ADMISSION_COALESCE", True),
            admission_statements_max=r.int("GATEWAY_ADMISSION_STATEMENTS_MAX", 1, minimum=1),
            # quotas
            bandwidth_flush_ms=r.int("GATEWAY_BANDWIDTH_FLUSH_MS", 1000, minimum=10),
            db_size_sample_s=r.float("GATEWAY_DB_SIZE_SAMPLE_S", 60.0, minimum=0.1),
            jobs_concurrency=r.int("GATEWAY_JOBS_CONCURRENCY", 10, minimum=0),
            jobs_per_project=r.int("GATEWAY_JOBS_PER_PROJECT", 5, minimum=1),
            jobs_allow_private_targets=r.bool("GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS", development),
            jobs_retention_days=r.float("GATEWAY_JOBS_RETENTION_DAYS", 7.0, minimum=0.0),
            jobs_lease_s=r.float("GATEWAY_JOBS_LEASE_S", 30.0, minimum=1.0),
            jobs_poll_s=r.float("GATEWAY_JOBS_POLL_S", 1.0, minimum=0.05),
            jobs_cron_tick_s=r.float("GATEWAY_JOBS_CRON_TICK_S", 1.0, minimum=0.05),
        )
        settings = replace(settings, auth=AuthSettings.from_reader(r))
        if settings.pool_max is not None and settings.pool_min > settings.pool_max:
            raise SettingsError(
                f"GATEWAY_POOL_MIN={settings.pool_min} is larger than "
                f"GATEWAY_POOL_MAX={settings.pool_max}"
            )
        return settings

    def require_database(self) -> None:
        if not self.database_url:
            raise SettingsError("DATABASE_URL is not set: it must name the PostgreSQL database")


ADMIN_SECRET_MIN_LENGTH = 16


def _admin_secrets(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """A short shared secret can be guessed offline from one signed request."""
    for secret in secrets:
        if len(secret) < ADMIN_SECRET_MIN_LENGTH:
            raise SettingsError(
                f"GATEWAY_ADMIN_HMAC_SECRET: each secret needs at least "
                f"{ADMIN_SECRET_MIN_LENGTH} characters"
            )
    return secrets


class _Reader:
    """Reads one variable at a time and names it in every complaint."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _get(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _parse(self, name: str, default: T, parse: Callable[[str], T], what: str) -> T:
        raw = self._get(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError):
            raise SettingsError(f"{name}={raw!r} is not {what}") from None

    def str(self, name: str, default: str) -> str:
        return self._get(name) or default

    def int(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self._parse(name, default, int, "an integer")
        if minimum is not None and value < minimum:
            raise SettingsError(f"{name}={value} must be at least {minimum}")
        return value

    def optional_int(self, name: str, *, minimum: int | None = None) -> int | None:
        if self._get(name) is None:
            return None
        return self.int(name, 0, minimum=minimum)

    def float(self, name: str, default: float, *, minimum: float | None = None) -> float:
        value = self._parse(name, default, float, "a number")
        if minimum is not None and value < minimum:
            raise SettingsError(f"{name}={value} must be at least {minimum}")
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self._get(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")

    def choice(self, name: str, default: Any, choices: tuple[str, ...]) -> Any:
        raw = self._get(name)
        if raw is None:
            return default
        if raw.lower() not in choices:
            raise SettingsError(f"{name}={raw!r} must be one of: {', '.join(choices)}")
        return raw.lower()

    def list(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._get(name)
        if raw is None:
            return default
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def networks(self, name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        networks = []
        for part in self.list(name, ()):
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise SettingsError(f"{name}: {part!r} is not an IP address or CIDR") from None
        return tuple(networks)


# --- end-user auth (gateway/auth/, docs/auth.md) -------------------------------------------

SMTP_SCHEMES = ("smtp", "smtps", "smtp+plain")


def _half_the_cores() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class AuthSettings:
    """The auth API's numbers. Throttles are per ``throttle_window_s`` (the original's
    10 minutes), counted in the database so they hold across instances."""

    session_ttl_s: int = 7 * 24 * 3600
    refresh_grace_s: int = 10
    magic_link_ttl_s: int = 15 * 60
    magic_link_return_token: bool = False
    magic_link_url: str = "http://localhost:3000/auth/magic-link"
    smtp_url: str = field(default="", repr=False)  # may carry the SMTP password
    smtp_from: str = "no-reply@localhost"
    smtp_timeout_s: float = 10.0
    throttle_window_s: int = 600
    sign_up_limit: int = 5
    sign_in_limit: int = 10
    magic_link_limit: int = 5
    verify_limit: int = 30
    # password hashing may take at most half of the machine's cores (the loop keeps the rest)
    hash_workers: int = field(default_factory=lambda: _half_the_cores())
    hash_queue_max: int = 64
    hash_nice: int = 10

    @classmethod
    def from_reader(cls, r: _Reader) -> AuthSettings:
        smtp_url = r.str("GATEWAY_SMTP_URL", "")
        if smtp_url and smtp_url.split("://", 1)[0].lower() not in SMTP_SCHEMES:
            schemes = ", ".join(s + "://" for s in SMTP_SCHEMES)
            raise SettingsError(f"GATEWAY_SMTP_URL must start with one of {schemes}")
        return cls(
            session_ttl_s=r.int("GATEWAY_AUTH_SESSION_TTL_S", 7 * 24 * 3600, minimum=60),
            refresh_grace_s=r.int("GATEWAY_AUTH_REFRESH_GRACE_S", 10, minimum=0),
            magic_link_ttl_s=r.int("GATEWAY_AUTH_MAGIC_LINK_TTL_S", 15 * 60, minimum=1),
            magic_link_return_token=r.bool("GATEWAY_AUTH_MAGIC_LINK_RETURN_TOKEN", False),
            magic_link_url=r.str(
                "GATEWAY_AUTH_MAGIC_LINK_URL", "http://localhost:3000/auth/magic-link"
            ),
            smtp_url=smtp_url,
            smtp_from=r.str("GATEWAY_SMTP_FROM", "no-reply@localhost"),
            smtp_timeout_s=r.float("GATEWAY_SMTP_TIMEOUT_S", 10.0, minimum=0.1),
            throttle_window_s=r.int("GATEWAY_AUTH_THROTTLE_WINDOW_S", 600, minimum=1),
            sign_up_limit=r.int("GATEWAY_AUTH_SIGN_UP_LIMIT", 5, minimum=1),
            sign_in_limit=r.int("GATEWAY_AUTH_SIGN_IN_LIMIT", 10, minimum=1),
            magic_link_limit=r.int("GATEWAY_AUTH_MAGIC_LINK_LIMIT", 5, minimum=1),
            verify_limit=r.int("GATEWAY_AUTH_VERIFY_LIMIT", 30, minimum=1),
            hash_workers=r.int("GATEWAY_AUTH_HASH_WORKERS", _half_the_cores(), minimum=1),
            hash_queue_max=r.int("GATEWAY_AUTH_HASH_QUEUE_MAX", 64, minimum=1),
            hash_nice=r.int("GATEWAY_AUTH_HASH_NICE", 10, minimum=0),
        )
