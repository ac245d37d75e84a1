"""A TCP proxy that adds a fixed delay in each direction, like a database in the next zone.

Every chunk read from one side is written to the other side ``delay`` seconds after it
arrived, in order; chunks are not serialized behind each other's delays, so pipelined
traffic keeps flowing (a real link adds latency, not a per-message queue). The delay is
scheduled on the event loop's clock, whose resolution on Linux is about a millisecond,
so the effective delay is slightly longer than asked: the round-trip scenario measures it
(``SELECT 1`` through the proxy vs direct) instead of trusting the setting.

Run it as its own process so the load generator can't delay its timers:

    python -m bench.delay_proxy --listen-port 6000 --target-port 5432 --delay-ms 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections import deque

CHUNK = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    pending: deque[tuple[float, bytes]] = deque()
    ready = asyncio.Event()
    done = False

    async def sender() -> None:
        while True:
            while not pending:
                if done:
                    return
                ready.clear()
                await ready.wait()
            due = pending[0][0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            # everything due by now goes out in one write
            now = loop.time()
            out = []
            while pending and pending[0][0] <= now:
                out.append(pending.popleft()[1])
            writer.write(b"".join(out))
            await writer.drain()

    task = asyncio.create_task(sender())
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            pending.append((loop.time() + delay, data))
            ready.set()
    finally:
        done = True
        ready.set()
        with contextlib.suppress(Exception):
            await task
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _handle(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    for w in (client_writer, server_writer):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.gather(
            _pump(client_reader, server_writer, delay),
            _pump(server_reader, client_writer, delay),
            return_exceptions=True,
        )
    finally:
        for w in (client_writer, server_writer):
            with contextlib.suppress(Exception):
                w.close()


async def serve(listen_port: int, target_host: str, target_port: int, delay_ms: float) -> None:
    delay = delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, (target_host, target_port), delay),
        "127.0.0.1",
        listen_port,
        reuse_address=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"delay proxy 127.0.0.1:{listen_port} -> {target_host}:{target_port} "
        f"(+{delay_ms} ms each way)",
        flush=True,
    )
    async with server:
        await stop.wait()


def start_process(target_port: int, delay_ms: float, listen_port: int) -> subprocess.Popen[bytes]:
    """The proxy as a child process, ready to accept when this returns."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.delay_proxy",
            "--listen-port",
            str(listen_port),
            "--target-port",
            str(target_port),
            "--delay-ms",
            str(delay_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"delay proxy exited with {child.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", listen_port), timeout=0.5):
                return child
        except OSError:
            time.sleep(0.05)
    child.kill()
    raise RuntimeError("delay proxy did not start")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delay_proxy", description=__doc__)
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=1.0, help="added each way")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen_port, args.target_host, args.target_port, args.delay_ms))


if __name__ == "__main__":
    main()
