"""gateway/http/protocol.py: an answer's head and body in one send, everything else as
uvicorn sends it (a real uvicorn server on a free port, raw sockets and httpx)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.http.protocol import OneSendHttpToolsProtocol, OneSendTransport


class RecordingTransport:
    """Records each write; a stand-in for the socket's transport."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


SIZED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def test_a_sized_answer_goes_in_one_write() -> None:
    raw = RecordingTransport()
    one = OneSendTransport(raw)  # type: ignore[arg-type]
    one.write(SIZED_HEAD)
    assert raw.writes == []
    one.write(b"hello")
    assert raw.writes == [SIZED_HEAD + b"hello"]
    # the next answer on the connection starts afresh
    one.write(SIZED_HEAD)
    one.write(b"world")
    assert raw.writes == [SIZED_HEAD + b"hello", SIZED_HEAD + b"world"]


def test_an_answer_without_a_length_and_anything_else_pass_straight_through() -> None:
    raw = RecordingTransport()
    one = OneSendTransport(raw)  # type: ignore[arg-type]
    one.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    one.write(STREAM_HEAD)
    one.write(b"5\r\nhello\r\n")
    assert raw.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", STREAM_HEAD, b"5\r\nhello\r\n"]


def test_a_held_head_is_sent_before_the_connection_closes_or_is_asked_anything() -> None:
    raw = RecordingTransport()
    one = OneSendTransport(raw)  # type: ignore[arg-type]
    one.write(SIZED_HEAD)
    one.close()
    assert raw.writes == [SIZED_HEAD] and raw.closed

    raw = RecordingTransport()
    one = OneSendTransport(raw)  # type: ignore[arg-type]
    one.write(SIZED_HEAD)
    assert one.get_extra_info("peername") == ("127.0.0.1", 1)
    assert raw.writes == [SIZED_HEAD]
    assert not one.is_closing()


# --- through a real uvicorn server ------------------------------------------------------


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/stream":
        # no content-length: the head goes at once, before the first event
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(1.0)
        await send({"type": "http.response.body", "body": b"late", "more_body": False})
        return
    if path == "/fails":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )
        raise RuntimeError("the app fails after starting its answer")
    body = b"hello"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"5"), (b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        _app,
        host="127.0.0.1",
        port=port,
        http=OneSendHttpToolsProtocol,
        log_level="critical",
        server_header=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _read_once(url: str, request: bytes) -> bytes:
    """The bytes of the first segment(s) the server sent, read once the answer is whole."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        time.sleep(0.2)  # both writes of a two-write answer are in by now
        return sock.recv(65536)


def test_get_head_keep_alive_and_streaming_through_uvicorn(server_url: str) -> None:
    with httpx.Client(base_url=server_url, timeout=5) as client:
        for _ in range(3):  # one connection, several answers
            answer = client.get("/")
            assert answer.status_code == 200 and answer.text == "hello"
            assert answer.headers["content-length"] == "5"
        head = client.head("/")
        assert head.status_code == 200 and head.content == b""
        assert client.get("/").text == "hello"  # the connection is fine after a HEAD

        # a stream's head is not held for its body
        with client.stream("GET", "/stream") as streaming:
            started = time.monotonic()
            assert streaming.status_code == 200
            assert time.monotonic() - started < 0.8
            assert streaming.read() == b"late"

    whole = _read_once(server_url, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert whole.startswith(b"HTTP/1.1 200 OK\r\n") and whole.endswith(b"\r\n\r\nhello")


def test_an_app_failing_after_its_head_ends_the_connection(server_url: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError), httpx.Client(timeout=5) as client:
        client.get(server_url + "/fails")
