"""The instance's LISTEN connection on channel ``gateway_metadata``.

Designed against the failures PostgREST's listener is known for:

- ONE dedicated autocommit connection from ``settings.direct_url`` — never the pool, and
  never through a transaction pooler, where LISTEN silently never delivers.
- TCP keepalives (idle 30 s, interval 10 s, 3 probes) so a dead peer is noticed in about
  a minute instead of the 2-hour default, plus an active self-check: every
  ``listener_ping_s`` the instance NOTIFYs itself (``ping:<instance>:<n>``, ignored by
  everyone else) on this very connection and expects it back within ``PING_TIMEOUT_S``.
  A half-open TCP connection, a blackholed route or a dropped LISTEN registration all
  end up here: the connection is treated as dead and replaced.
- On connection loss: reconnect with capped exponential backoff (0.1 s doubling to 2 s).
  After EVERY (re)connect — the first one included — ``on_all`` runs, because
  notifications sent while nobody listened are lost for good. LISTEN is issued before
  ``on_all``, so nothing committed after the flush can be missed.
- Bursts are debounced per project: the first notification invalidates at once; any
  further ones inside the next ``debounce_s`` (100 ms) are coalesced into ONE more
  invalidation at the end of the window (and a new window opens). A burst of any length
  therefore causes at most one invalidation per window plus the first, i.e. a bounded
  number of reloads, while the first change is still seen without delay.

Callbacks are plain synchronous callables run on the event loop; one that raises is
logged and does not stop the listener. Nothing here is awaited by request handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from gateway.settings import Settings

logger = logging.getLogger("gateway.listener")

CHANNEL = "gateway_metadata"
ALL_PAYLOAD = "*"
PING_PREFIX = "ping:"
PING_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 2.0
# The backoff starts over only once a connection has stayed up this long (or answered a
# ping), so a flapping server is not hammered (nor the cache flushed) ten times a second.
STABLE_AFTER_S = 10.0
DEBOUNCE_S = 0.1
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

ProjectCallback = Callable[[str], None]
AllCallback = Callable[[], None]


class ListenerDead(Exception):
    """The self-check's notification did not come back in time."""


def _callbacks(value: Any) -> list[Any]:
    if value is None:
        return []
    if callable(value):
        return [value]
    return list(value)


class MetadataListener:
    def __init__(
        self,
        settings: Settings,
        on_project: ProjectCallback | Iterable[ProjectCallback] | None = None,
        on_all: AllCallback | Iterable[AllCallback] | None = None,
        *,
        ping_s: float | None = None,
        ping_timeout_s: float = PING_TIMEOUT_S,
        debounce_s: float = DEBOUNCE_S,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.settings = settings
        self.on_project: list[ProjectCallback] = _callbacks(on_project)
        self.on_all: list[AllCallback] = _callbacks(on_all)
        self.ping_s = settings.listener_ping_s if ping_s is None else ping_s
        self.ping_timeout_s = ping_timeout_s
        self.debounce_s = debounce_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s

        self.connected = False
        self.disconnected_since: float | None = time.monotonic()
        self.reconnects = 0  # successful connects after the first one
        self.connects = 0
        self.attempts = 0  # connection attempts, failed ones included
        self.last_error: str | None = None
        self.backend_pid: int | None = None
        self.notifications = 0  # project notifications received (pings excluded)
        self.project_invalidations = 0  # on_project rounds after debouncing
        self.full_invalidations = 0
        self.pings_sent = 0
        self.pings_received = 0

        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._windows: dict[str, asyncio.TimerHandle] = {}
        self._pending: set[str] = set()
        self._ping_seq = 0
        self._ping_expected: str | None = None
        self._ping_deadline: float | None = None
        self._connected_event = asyncio.Event()
        # further channels on this same connection (e.g. gateway_jobs): name → callbacks
        self.channels: dict[str, list[Callable[[str], None]]] = {}

    # --- lifecycle -----------------------------------------------------------------------

    def add_callbacks(
        self, on_project: ProjectCallback | None = None, on_all: AllCallback | None = None
    ) -> None:
        if on_project is not None:
            self.on_project.append(on_project)
        if on_all is not None:
            self.on_all.append(on_all)

    def add_channel(self, channel: str, callback: Callable[[str], None]) -> None:
        """Also LISTEN on ``channel`` (from the next connect on; call before ``start``);
        ``callback(payload)`` runs for each of its notifications. After every reconnect
        the callback runs once with ``"*"``: notifications sent meanwhile are lost."""
        self.channels.setdefault(channel, []).append(callback)

    async def start(self) -> None:
        """Start in the background; returns at once (never waits for the database)."""
        if self._task is not None:
            return
        if _looks_pooled(self.settings):
            logger.warning(
                "the metadata listener's URL looks like a transaction pooler (set "
                "DATABASE_DIRECT_URL to the direct endpoint): LISTEN through it never "
                "delivers, so the self-check will keep replacing the connection"
            )
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="gateway-metadata-listener")

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._connected_event.wait()
        return self.connected

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for handle in self._windows.values():
            handle.cancel()
        self._windows.clear()
        self._pending.clear()
        await self._close()
        self._set_disconnected()

    def state(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "backend_pid": self.backend_pid,
            "notifications": self.notifications,
            "project_invalidations": self.project_invalidations,
            "full_invalidations": self.full_invalidations,
            "pings_sent": self.pings_sent,
            "pings_received": self.pings_received,
        }

    # --- test hooks (cause real faults on the real connection) ---------------------------

    async def execute_on_connection(self, statement: str) -> None:
        """Run ``statement`` on the listening connection (tests: ``UNLISTEN *``)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("not connected")
        await conn.execute(statement)

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.backoff_initial_s
        while not self._stopping:
            up_since: float | None = None
            try:
                await self._connect()
                up_since = time.monotonic()
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {_first_line(exc)}"
                if self.connected:
                    logger.warning("metadata listener lost its connection: %s", self.last_error)
                else:
                    logger.warning("metadata listener can't connect: %s", self.last_error)
            finally:
                self._set_disconnected()
                await self._close()
            if self._stopping:
                return
            if up_since is not None and (
                time.monotonic() - up_since >= STABLE_AFTER_S or self.pings_received
            ):
                delay = self.backoff_initial_s
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def _connect(self) -> None:
        self.attempts += 1
        async with asyncio.timeout(CONNECT_TIMEOUT_S + 1):
            conn = await psycopg.AsyncConnection.connect(
                self.settings.direct_url,
                autocommit=True,
                application_name=self.settings.application_name,
                connect_timeout=CONNECT_TIMEOUT_S,
                prepare_threshold=None,
                **KEEPALIVES,
            )
        self._conn = conn
        await self._bounded(
            conn,
            sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)),
            "LISTEN did not complete in time",
        )
        for channel in self.channels:
            await self._bounded(
                conn,
                sql.SQL("LISTEN {}").format(sql.Identifier(channel)),
                "LISTEN did not complete in time",
            )
        self.backend_pid = conn.info.backend_pid
        first = self.connects == 0
        self.connects += 1
        if not first:
            self.reconnects += 1
        self.connected = True
        self.disconnected_since = None
        self._ping_expected = None
        self._ping_deadline = None
        self._connected_event.set()
        logger.info(
            "metadata listener %s (backend pid %s)",
            "connected" if first else "reconnected",
            self.backend_pid,
        )
        # Notifications sent while nobody listened are lost: drop everything. LISTEN is
        # already active, so whatever commits from here on is heard.
        self._fire_all()
        for channel in self.channels:
            self._fire_channel(channel, ALL_PAYLOAD)

    async def _listen(self) -> None:
        conn = self._conn
        assert conn is not None
        next_ping = time.monotonic() + self.ping_s
        while not self._stopping:
            now = time.monotonic()
            if self._ping_deadline is not None and now >= self._ping_deadline:
                raise ListenerDead(
                    f"self-check notification not received within {self.ping_timeout_s:g} s"
                )
            if self._ping_expected is None and now >= next_ping:
                await self._send_ping(conn)
                next_ping = time.monotonic() + self.ping_s
                continue
            wake = next_ping if self._ping_deadline is None else self._ping_deadline
            timeout = max(0.0, wake - now)
            gen = conn.notifies(timeout=timeout)
            async with contextlib.aclosing(gen):
                async for notify in gen:
                    self._on_notify(notify, conn)

    async def _send_ping(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._ping_seq += 1
        payload = f"{PING_PREFIX}{self.settings.instance_id}:{self._ping_seq}"
        self._ping_expected = payload
        self._ping_deadline = time.monotonic() + self.ping_timeout_s
        self.pings_sent += 1
        await self._bounded(
            conn,
            sql.SQL("NOTIFY {}, {}").format(sql.Identifier(CHANNEL), sql.Literal(payload)),
            "self-check NOTIFY did not complete in time",
        )

    async def _bounded(
        self, conn: psycopg.AsyncConnection[Any], statement: sql.Composable, what: str
    ) -> None:
        """Run ``statement`` but give up after ``ping_timeout_s`` — without psycopg's polite
        cancellation (a cancel request and up to 10 s of waiting for an answer that a dead
        connection never sends): the socket is closed under the statement instead."""
        task = asyncio.ensure_future(conn.execute(statement))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.ping_timeout_s)
        except asyncio.CancelledError:
            _abort(conn)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        if not done:
            _abort(conn)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise ListenerDead(what)
        task.result()

    def _on_notify(self, notify: psycopg.Notify, conn: psycopg.AsyncConnection[Any]) -> None:
        payload = notify.payload
        if notify.channel != CHANNEL:
            self._fire_channel(notify.channel, payload)
            return
        if payload.startswith(PING_PREFIX):
            if payload == self._ping_expected:
                self._ping_expected = None
                self._ping_deadline = None
                self.pings_received += 1
            return  # another instance's ping, or a late one of ours
        if payload == ALL_PAYLOAD:
            self._fire_all()
            return
        self.notifications += 1
        self._debounced(payload)

    # --- debounce ------------------------------------------------------------------------

    def _debounced(self, project_id: str) -> None:
        if project_id in self._windows:
            self._pending.add(project_id)  # coalesced into the window's closing round
            return
        self._fire_project(project_id)
        self._open_window(project_id)

    def _open_window(self, project_id: str) -> None:
        loop = asyncio.get_running_loop()
        self._windows[project_id] = loop.call_later(self.debounce_s, self._close_window, project_id)

    def _close_window(self, project_id: str) -> None:
        self._windows.pop(project_id, None)
        if project_id in self._pending:
            self._pending.discard(project_id)
            self._fire_project(project_id)
            self._open_window(project_id)

    # --- callbacks -----------------------------------------------------------------------

    def _fire_project(self, project_id: str) -> None:
        self.project_invalidations += 1
        for callback in self.on_project:
            try:
                callback(project_id)
            except Exception:
                logger.exception("metadata listener: on_project callback failed")

    def _fire_all(self) -> None:
        self.full_invalidations += 1
        for callback in self.on_all:
            try:
                callback()
            except Exception:
                logger.exception("metadata listener: on_all callback failed")

    def _fire_channel(self, channel: str, payload: str) -> None:
        for callback in self.channels.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                logger.exception("listener: %s callback failed", channel)

    # --- helpers -------------------------------------------------------------------------

    def _set_disconnected(self) -> None:
        if self.connected or self.disconnected_since is None:
            self.disconnected_since = time.monotonic()
        self.connected = False
        self._connected_event.clear()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await conn.close()


def _looks_pooled(settings: Settings) -> bool:
    if settings.database_direct_url:
        return "-pooler." in settings.database_direct_url
    return settings.db_pooler == "transaction" or "-pooler." in settings.database_url


def _abort(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close the socket at once: no goodbye, no cancel request, nothing to wait for."""
    with contextlib.suppress(Exception):
        conn.pgconn.finish()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
