"""The request log writer: an in-memory buffer flushed to ``gateway.request_log`` with COPY.

``record(row)`` is what the request path calls: it appends to a deque and returns — no
await, no database, no exception. A background task takes the rows in batches and
writes each batch with one ``COPY … FROM STDIN`` on a pool connection (COPY works through
a transaction pooler too). It flushes every ``GATEWAY_LOG_FLUSH_MS`` or as soon as
``FLUSH_ROWS`` rows are waiting.

When the database can't take the rows, they stay in the buffer and the writer retries
with a growing pause. The buffer holds at most ``GATEWAY_LOG_BUFFER_MAX`` rows (in the
deque plus the batch in flight); beyond that the OLDEST rows are dropped, counted in
``dropped`` (a metric) and reported by a warning at most every ``WARN_EVERY_S``.

``stop()`` writes everything still buffered before it returns, so a graceful shutdown
loses nothing; only a crash (SIGKILL, OOM, power) loses what was buffered — at most a
flush interval's worth of rows while the database is healthy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import ipaddress
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.settings import Settings

logger = logging.getLogger("gateway.request_log")

FLUSH_ROWS = 500  # wake the writer as soon as this many rows wait
BATCH_MAX = 5000  # rows per COPY statement
RETRY_MAX_S = 5.0  # longest pause between attempts while the database is unavailable
WARN_EVERY_S = 10.0
STOP_TIMEOUT_S = 10.0  # the harness SIGKILLs after 15 s; give up on an unreachable database

COLUMNS = (
    "created_at",
    "project_id",
    "api_key_id",
    "instance_id",
    "request_id",
    "method",
    "path",
    "table_name",
    "status_code",
    "error_code",
    "duration_ms",
    "response_size_bytes",
    "row_count",
    "client_ip",
    "user_agent",
)
COPY_SQL = f"COPY gateway.request_log ({', '.join(COLUMNS)}) FROM STDIN"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class LogRecord:
    """One request, as the routes know it. ``instance_id`` defaults to the writer's."""

    method: str
    path: str
    status_code: int
    duration_ms: float
    project_id: Any = None
    api_key_id: Any = None
    request_id: str | None = None
    table_name: str | None = None
    error_code: str | None = None
    response_size_bytes: int | None = None
    row_count: int | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    instance_id: str | None = None
    created_at: dt.datetime = field(default_factory=_now)


def client_ip(
    peer: str | None, x_forwarded_for: str | None, trusted_proxies: Sequence[IPNetwork]
) -> str | None:
    """The client's address by the standard real-IP rule: when the peer is a trusted proxy,
    walk ``X-Forwarded-For`` from the RIGHT (each proxy appends the address it received
    the request from) past every trusted proxy; the first entry that is not one is the
    client. Entries left of it were written by the client itself and prove nothing, so a
    spoofed left-most entry can't move a throttle bucket. An unparseable entry ends the
    walk at the last trusted hop; a chain of only trusted proxies gives its left-most one.
    Only valid IP addresses come out (the column is ``inet``)."""
    peer_ip, peer_text = _parsed_ip(peer) if peer else (None, None)
    if peer_ip is None or not x_forwarded_for or not _trusted(peer_ip, trusted_proxies):
        return peer_text
    client = peer_text
    for entry in reversed(x_forwarded_for.split(",")[-MAX_FORWARDED_HOPS:]):
        hop, hop_text = _parsed_ip(_strip_port(entry.strip()))
        if hop is None:
            break
        client = hop_text
        if not _trusted(hop, trusted_proxies):
            break
    return client


# a header longer than this many hops is not a real chain; only its right end is read
MAX_FORWARDED_HOPS = 32


def _trusted(ip: IPAddress, trusted_proxies: Sequence[IPNetwork]) -> bool:
    return any(ip in net for net in trusted_proxies if net.version == ip.version)


def _strip_port(entry: str) -> str:
    """``[v6]:port`` and ``v4:port`` → the address alone."""
    if entry.startswith("[") and "]" in entry:
        return entry[1 : entry.index("]")]
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


@functools.lru_cache(maxsize=4096)
def _parsed_ip(text: str) -> tuple[IPAddress | None, str | None]:
    """A peer address parsed once (clients keep their address across requests)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None, None
    return ip, str(ip)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _text(value: Any, limit: int = 1000) -> str | None:
    if value is None:
        return None
    text = str(value)
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text[:limit]


def _int(value: Any) -> int | None:
    if value is None:
        return None
    number = int(value)
    return max(min(number, 2_147_483_647), -2_147_483_648)


def _row(record: LogRecord, instance_id: str) -> tuple[Any, ...]:
    """The COPY tuple; cleans what PostgreSQL would refuse so one row can't block a batch."""
    return (
        record.created_at,
        _text(record.project_id),
        _text(record.api_key_id),
        _text(record.instance_id or instance_id, 200),
        _text(record.request_id, 200),
        _text(record.method, 100) or "?",
        _text(record.path, 1000) or "?",
        _text(record.table_name, 200),
        max(min(int(record.status_code), 32767), 0),
        _text(record.error_code, 100),
        float(record.duration_ms),
        _int(record.response_size_bytes),
        _int(record.row_count),
        record.client_ip or None,
        _text(record.user_agent, 1000),
    )


class RequestLog:
    """Buffered, batched writer of ``gateway.request_log`` for one instance."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool | None,
        *,
        flush_rows: int = FLUSH_ROWS,
        batch_max: int = BATCH_MAX,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.enabled = settings.request_log_enabled
        self.instance_id = settings.instance_id
        self.buffer_max = settings.log_buffer_max
        self.flush_interval_s = settings.log_flush_ms / 1000.0
        self.flush_rows = max(1, min(flush_rows, self.buffer_max))
        self.batch_max = max(1, min(batch_max, self.buffer_max))
        self._buffer: collections.deque[LogRecord] = collections.deque()
        # rows of the batch being written stay in the buffer until the COPY succeeded;
        # record() may drop some of them from the left meanwhile (counted here)
        self._inflight_left = 0
        self._inflight_dropped = 0
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._retry_s = 0.0
        # counters (read by metrics and tests)
        self.written = 0
        self.dropped = 0
        self.rejected = 0  # rows PostgreSQL refused as invalid data (never retried)
        self.batches = 0
        self.flush_errors = 0
        self.last_error: str | None = None
        self._dropped_reported = 0
        self._last_drop_warning = 0.0
        self._last_error_warning = 0.0

    # --- the request path ------------------------------------------------------------

    def record(self, row: LogRecord) -> None:
        """Queue one row: O(1), never awaits, never raises."""
        if not self.enabled:
            return
        try:
            if len(self._buffer) >= self.buffer_max:
                self._buffer.popleft()  # the oldest row goes
                self.dropped += 1
                if self._inflight_left:  # it was being written: settle() will know
                    self._inflight_left -= 1
                    self._inflight_dropped += 1
                self._warn_drops()
            self._buffer.append(row)
            # the rows of a batch in flight don't count: counted, every row recorded
            # during a COPY would start the next one at once, a few rows each
            if (
                len(self._buffer) - self._inflight_left >= self.flush_rows
                and not self._wake.is_set()
            ):
                self._wake.set()
        except Exception:  # pragma: no cover - logging must never fail a request
            logger.exception("request log: record failed")

    @property
    def depth(self) -> int:
        """Rows waiting in memory (including a batch being written)."""
        return len(self._buffer)

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "depth": self.depth,
            "buffer_max": self.buffer_max,
            "written": self.written,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "batches": self.batches,
            "flush_errors": self.flush_errors,
            "last_error": self.last_error,
        }

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and self.enabled:
            self._stopping = False
            self._stop_event.clear()
            self._task = asyncio.create_task(self._run(), name="request-log-writer")

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Write every buffered row, then stop. If the database stays unreachable for
        ``timeout`` seconds, give up and say how many rows were lost."""
        deadline = time.monotonic() + timeout
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        if self._task is not None:
            try:  # let a COPY in progress finish rather than cancel it half-way
                await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout / 2)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            except Exception:  # pragma: no cover
                logger.exception("request log: writer failed")
            self._task = None
        if not self.enabled:
            return
        pause = 0.05
        while self._buffer and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.01)):
                    await self.flush()
            except TimeoutError:
                break
            if self._buffer:
                await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
                pause = min(pause * 2, 1.0)
        if self._buffer:
            lost = len(self._buffer)
            self._inflight_left = self._inflight_dropped = 0
            self.dropped += lost
            self._buffer.clear()
            logger.error(
                "request log: database unreachable at shutdown, %d rows not written (%s)",
                lost,
                self.last_error,
            )

    # --- the writer --------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            if self._retry_s:  # after a failure, wait out the pause (a full buffer can't spin)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), timeout=self._retry_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
            self._wake.clear()
            if self._stopping:
                break
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - flush reports its own errors
                logger.exception("request log: writer error")

    async def flush(self) -> bool:
        """Write everything buffered now, batch by batch. False when the database refused
        (the rows stay buffered and ``_retry_s`` grows)."""
        async with self._flush_lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        # the rows buffered now, not those recorded while they are written: under steady
        # load draining "until empty" would run COPY after COPY of a few rows each, each
        # with its own transaction, instead of one batch per interval
        left = len(self._buffer)
        while self._buffer and left > 0:
            count = min(len(self._buffer), self.batch_max, left)
            left -= count
            batch = list(itertools.islice(self._buffer, count))  # they stay buffered
            self._inflight_left, self._inflight_dropped = count, 0
            try:
                await self._copy(batch)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                # a row PostgreSQL refuses would block the log forever: find it and skip it
                if not await self._copy_one_by_one(batch, exc):
                    return False
            except Exception as exc:
                self._settle(0)
                self._failed(exc)
                return False
            except BaseException:  # cancelled mid-COPY (shutdown deadline): rows stay
                self._settle(0)
                raise
            else:
                self._settle(count)
                self.written += count
                self.batches += 1
            self._retry_s = 0.0
        return True

    def _settle(self, done: int) -> None:
        """The first ``done`` rows of the batch in flight are finished (written or
        refused): take them off the buffer. Rows record() dropped meanwhile were the
        batch's first ones; those that were finished after all are not lost."""
        dropped_meanwhile = self._inflight_dropped
        for _ in range(max(done - dropped_meanwhile, 0)):
            self._buffer.popleft()
        self.dropped -= min(done, dropped_meanwhile)
        self._inflight_left = self._inflight_dropped = 0

    async def _copy(self, batch: Iterable[LogRecord]) -> None:
        instance_id = self.instance_id
        if self.pool is None:
            raise RuntimeError("the request log has no pool yet")
        async with (
            self.pool.connection() as conn,
            conn.cursor() as cur,
            cur.copy(COPY_SQL) as copy,
        ):
            for record in batch:
                await copy.write_row(_row(record, instance_id))

    async def _copy_one_by_one(self, batch: list[LogRecord], first: Exception) -> bool:
        done = 0
        try:
            for record in batch:
                try:
                    await self._copy([record])
                except (psycopg.DataError, psycopg.IntegrityError) as exc:
                    self.rejected += 1
                    logger.error("request log: row refused by PostgreSQL, skipped: %s", exc)
                else:
                    self.written += 1
                done += 1
        except Exception as exc:
            self._settle(done)
            self._failed(exc)
            return False
        except BaseException:
            self._settle(done)
            raise
        self._settle(done)
        self.batches += 1
        self.last_error = _first_line(first)
        return True

    def _failed(self, exc: Exception) -> None:
        self.flush_errors += 1
        self.last_error = _first_line(exc)
        self._retry_s = min(max(self._retry_s * 2, self.flush_interval_s, 0.1), RETRY_MAX_S)
        now = time.monotonic()
        if now - self._last_error_warning >= WARN_EVERY_S:
            self._last_error_warning = now
            logger.warning(
                "request log: can't write to the database (%s); %d rows buffered, retrying",
                self.last_error,
                self.depth,
            )

    def _warn_drops(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_warning >= WARN_EVERY_S:
            self._last_drop_warning = now
            new = self.dropped - self._dropped_reported
            self._dropped_reported = self.dropped
            logger.warning(
                "request log: buffer full (%d rows), dropped %d oldest rows (%d in total)",
                self.buffer_max,
                new,
                self.dropped,
            )
