"""A subscription as ``text/event-stream`` bytes (no HTTP framework here)."""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
)

import orjson

from gateway.realtime.events import Event
from gateway.realtime.subscription import Subscription

HEARTBEAT_S = 15.0
RETRY_MS = 2000
COALESCE_MAX = 64  # SSE blocks per write when a subscriber's queue has a backlog


# --- SSE ------------------------------------------------------------------------------------


def format_event(event: Event) -> bytes:
    """One ``text/event-stream`` block."""
    if event.raw is not None:
        return event.raw
    kind = event.kind
    if kind == "ping":
        if event.cursor is not None:
            return f": ping\nid: {event.cursor}\n\n".encode()
        return b": ping\n\n"
    if kind == "position":
        # an id-only block: browsers update lastEventId without firing an event, so a
        # reconnect resumes from here even before the first change arrives
        return f"retry: {RETRY_MS}\nid: {event.cursor}\n\n".encode()
    head = f"id: {event.cursor}\n" if event.cursor is not None else ""
    return (
        head.encode()
        + b"event: "
        + kind.encode()
        + b"\ndata: "
        + orjson.dumps(event.data if event.data is not None else {})
        + b"\n\n"
    )


async def sse_stream(sub: Subscription, heartbeat_s: float = HEARTBEAT_S) -> AsyncIterator[bytes]:
    """The subscription as SSE bytes; closes the subscription when the stream ends."""
    buffered: list[bytes] = []
    try:
        async for event in sub.events(heartbeat_s):
            buffered.append(format_event(event))
            # changes already queued go out in one write; nothing waits for company
            if len(buffered) >= COALESCE_MAX or sub.queue.empty():
                yield b"".join(buffered)
                buffered.clear()
        if buffered:
            yield b"".join(buffered)
    finally:
        sub.close()
