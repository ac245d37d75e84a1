"""Single-use tickets for opening a realtime stream from a browser's ``EventSource``.

``EventSource`` can't send headers, and a session token must never travel in a URL
(URLs end up in access logs, proxies and browser history). So a page asks
``POST /v1/inhouse/db/realtime/ticket`` with its key and session in headers, and puts the
answer — a ticket valid ``TICKET_TTL_S`` seconds, good for ONE stream — in the stream's
URL instead.

Only the SHA-256 of a ticket is stored, in PostgreSQL (``gateway.realtime_tickets``),
so any instance accepts it; ``DELETE ... RETURNING`` consumes it, so it opens one stream
however many instances see it at once. The row keeps the hashes of the key and of the
session it was asked with: the stream runs the usual admission with them, so the session
is checked again (a sign-out between the ticket and the stream wins) and the stream's
revalidation keeps checking it. Expired rows are deleted, a bounded batch at a time, by
the route that creates tickets.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

from gateway.auth.tokens import MAX_TOKEN_LENGTH, new_token, token_hash
from gateway.errors import GatewayError

TICKET_TTL_S = 60
CLEANUP_BATCH = 100

CREATE_SQL = """
WITH expired AS (
    DELETE FROM gateway.realtime_tickets
     WHERE ticket_hash IN (SELECT ticket_hash FROM gateway.realtime_tickets
                            WHERE expires_at < now() ORDER BY expires_at LIMIT %s
                              FOR UPDATE SKIP LOCKED)
)
INSERT INTO gateway.realtime_tickets (ticket_hash, project_id, key_hash, session_hash,
                                      expires_at)
VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))
RETURNING expires_at
"""

CONSUME_SQL = """
DELETE FROM gateway.realtime_tickets WHERE ticket_hash = %s
RETURNING key_hash, session_hash, expires_at > now() AS live
"""


@dataclass(frozen=True, slots=True)
class Ticket:
    key_hash: str
    session_hash: str | None


async def create_ticket(
    conn: psycopg.AsyncConnection[Any],
    project_id: str,
    key_hash: str,
    session_hash: str | None,
) -> tuple[str, dt.datetime]:
    """A new ticket (shown once) and when it expires (database clock)."""
    ticket = new_token()
    cur = await conn.execute(
        CREATE_SQL,
        [CLEANUP_BATCH, token_hash(ticket), project_id, key_hash, session_hash, TICKET_TTL_S],
    )
    row = await cur.fetchone()
    assert row is not None
    return ticket, row[0]


async def consume_ticket(conn: psycopg.AsyncConnection[Any], ticket: str) -> Ticket:
    """The ticket's key and session; 401 when unknown, used or expired. Single use."""
    if not ticket or len(ticket) > MAX_TOKEN_LENGTH:
        raise invalid_ticket()
    cur = await conn.execute(CONSUME_SQL, [token_hash(ticket)])
    row = await cur.fetchone()
    if row is None:
        raise invalid_ticket()
    key_hash, session_hash, live = row
    if not live:
        raise GatewayError(
            "TICKET_EXPIRED",
            f"the realtime ticket has expired (valid {TICKET_TTL_S} s): ask for a new one",
            status=401,
        )
    return Ticket(key_hash, session_hash)


def cell_ticket(cell: str, ticket: str) -> str:
    """The ticket as given to the client: a project off the home cell has its cell's name
    in front (``<cell>.<ticket>``; tokens never contain a dot), so the stream that redeems
    it — with no key beside it — is routed to the cell that stored it."""
    return ticket if cell == "home" else f"{cell}.{ticket}"


def split_ticket(ticket: str | None) -> tuple[str | None, str | None]:
    """``(cell or None for home, the ticket itself)`` of a ticket from ``cell_ticket``."""
    if ticket is None or "." not in ticket:
        return None, ticket
    cell, _, rest = ticket.partition(".")
    return cell, rest


def invalid_ticket() -> GatewayError:
    return GatewayError(
        "TICKET_INVALID",
        "unknown or already used realtime ticket: ask POST /v1/inhouse/db/realtime/ticket "
        "for a new one",
        status=401,
    )
