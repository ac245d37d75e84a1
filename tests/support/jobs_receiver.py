"""A real HTTP receiver for job deliveries, in the test process (127.0.0.1, threaded).

It verifies every delivery's signature with the project's secret, records what arrived
(id, attempt, payload, when it started and ended) and answers as the payload asks:
``{"sleep": seconds}``, ``{"status": code}``, ``{"failTimes": n}`` (fail the first n
attempts), ``{"redirect": url}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.jobs import signing

JOBS = "/v1/inhouse/jobs"
LEASE_S = 3.0
# three instances that poll often and lose a lease fast (redelivery within seconds)
JOBS_ENV = {
    "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true",
    "GATEWAY_JOBS_POLL_S": "0.5",
    "GATEWAY_JOBS_CONCURRENCY": "16",
    "GATEWAY_JOBS_PER_PROJECT": "16",
    "GATEWAY_JOBS_LEASE_S": str(LEASE_S),
    "GATEWAY_MAINTENANCE_INTERVAL_S": "2",
}


@dataclass
class Delivery:
    job_id: str
    name: str
    attempt: int
    payload: Any
    started: float
    ended: float
    signature_ok: bool
    header_id: str
    timestamp: str


class Receiver:
    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.deliveries: list[Delivery] = []
        self.arrivals: list[str] = []  # job ids, as requests start (before any sleep)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                started = time.monotonic()
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                ts = self.headers.get(signing.HEADER_TIMESTAMP, "")
                sig = self.headers.get(signing.HEADER_SIGNATURE, "")
                ok = any(signing.verify(s, ts, body, sig) for s in receiver.secrets)
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {}
                payload = doc.get("payload") if isinstance(doc, dict) else None
                with receiver.lock:
                    receiver.arrivals.append(str(doc.get("id")))
                behave = payload if isinstance(payload, dict) else {}
                if behave.get("sleep"):
                    time.sleep(float(behave["sleep"]))
                status = int(behave.get("status", 200))
                if behave.get("failTimes") and doc.get("attempt", 1) <= int(behave["failTimes"]):
                    status = 500
                headers = {}
                if behave.get("redirect"):
                    status = 302
                    headers["Location"] = behave["redirect"]
                answer = json.dumps({"received": doc.get("id"), "attempt": doc.get("attempt")})
                data = answer.encode()
                ended = time.monotonic()
                with receiver.lock:
                    receiver.deliveries.append(
                        Delivery(
                            job_id=str(doc.get("id")),
                            name=str(doc.get("name")),
                            attempt=int(doc.get("attempt") or 0),
                            payload=payload,
                            started=started,
                            ended=ended,
                            signature_ok=ok,
                            header_id=self.headers.get(signing.HEADER_ID, ""),
                            timestamp=ts,
                        )
                    )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            request_queue_size = 512  # 3 instances x 16 delivery slots connect at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/jobs", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def for_job(self, job_id: str) -> list[Delivery]:
        return [d for d in self.snapshot() if d.job_id == job_id]


def set_endpoint(pg_url: str, project: str, url: str, *, allow_private: bool = True) -> str:
    """``gateway jobs set-endpoint`` as a real subprocess; returns the signing secret."""
    import os

    env = {
        **os.environ,
        "DATABASE_URL": pg_url,
        "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true" if allow_private else "false",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "jobs", "set-endpoint", project, url, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["signing_secret"])
