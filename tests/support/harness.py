"""Real gateway processes for multi-instance tests, and control over the test database.

Each instance is ``python -m gateway serve`` on a free port with its own instance id;
``start`` waits for ``/readyz``; ``stop`` sends SIGTERM and, after a timeout, SIGKILL.
Their output goes to files so a failing test can show it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.db.localdb import LocalPostgres, free_port
from tests.support.polling import eventually

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@dataclass
class GatewayProcess:
    index: int
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    instance_id: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (a graceful shutdown), then SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class GatewayCluster:
    database_url: str
    count: int
    env: dict[str, str]
    log_dir: Path
    direct_url: str | None = None
    instances: list[GatewayProcess] = field(default_factory=list)
    name: str = "gw"

    @property
    def urls(self) -> list[str]:
        return [i.url for i in self.instances]

    def _spawn(self, index: int) -> GatewayProcess:
        port = free_port()
        instance_id = f"{self.name}-{index}-{port}"
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "GATEWAY_INSTANCE_ID": instance_id,
            "PYTHONUNBUFFERED": "1",
            # the pools of a cluster share the test database's budget
            "GATEWAY_INSTANCES": str(self.count),
            **self.env,
        }
        if self.direct_url:
            env["DATABASE_DIRECT_URL"] = self.direct_url
        log_path = self.log_dir / f"{instance_id}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return GatewayProcess(index, port, process, log_path, instance_id)

    def start(self) -> None:
        self.instances = [self._spawn(i) for i in range(self.count)]
        for instance in self.instances:
            self.wait_ready(instance)

    def wait_ready(self, instance: GatewayProcess, timeout: float = READY_TIMEOUT_S) -> None:
        """Until ``/readyz`` answers 200; a process that exits meanwhile fails at once."""

        def ready() -> bool:
            if not instance.alive():
                raise RuntimeError(
                    f"gateway {instance.instance_id} exited with {instance.process.returncode}:\n"
                    + instance.output()
                )
            try:
                answer = httpx.get(instance.url + "/readyz", timeout=1.0)
            except httpx.HTTPError:
                return False
            # Ready, and its LISTEN connection up: the first connect drops every local deny
            # and cached catalog (the reconnect rule), which would otherwise land in the
            # middle of a test that started at once.
            listener = answer.json().get("listener") if answer.status_code == 200 else None
            return answer.status_code == 200 and (listener is None or listener["connected"])

        if not eventually(ready, timeout=timeout):
            raise RuntimeError(f"gateway {instance.instance_id} not ready:\n{instance.output()}")

    def restart(self, index: int) -> GatewayProcess:
        self.instances[index].terminate()
        self.instances[index] = self._spawn(index)
        self.wait_ready(self.instances[index])
        return self.instances[index]

    def stop(self) -> None:
        for instance in self.instances:
            instance.terminate()

    def output(self) -> str:
        return "\n".join(f"----- {i.instance_id} -----\n{i.output()}" for i in self.instances)


class ClusterStarter:
    """Starts clusters on one database and stops every one of them at the end, even one
    whose start failed half-way (its processes would outlive the test otherwise)."""

    def __init__(self, database_url: str, log_dir: Path) -> None:
        self.database_url = database_url
        self.log_dir = log_dir
        self.clusters: list[GatewayCluster] = []

    def __call__(
        self, count: int = 1, env: dict[str, str] | None = None, **kwargs: Any
    ) -> GatewayCluster:
        cluster = GatewayCluster(
            database_url=self.database_url,
            count=count,
            env=env or {},
            log_dir=self.log_dir,
            **kwargs,
        )
        self.clusters.append(cluster)
        cluster.start()
        return cluster

    def stop_all(self) -> None:
        for cluster in self.clusters:
            cluster.stop()


class LocalServerControl:
    """Stop and start the session's PostgreSQL on purpose, for fault tests."""

    def __init__(self, server: LocalPostgres) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self, mode: str = "immediate") -> None:
        self.server.stop(mode)

    def start(self) -> None:
        self.server.start()

    def ensure_running(self) -> None:
        if not self.server.is_running():
            self.server.start()


def wait_notifications_settled(url: str, quiet_s: float = 0.3, timeout: float = 10.0) -> None:
    """Until the instance at ``url`` has heard no metadata notification for ``quiet_s``.

    Creating a project (its keys, its tables) notifies every instance, and a notification
    drops the project's local denies and its cached catalog: a test of either must start
    after they have arrived, or one lands between the database's refusal and the request
    that should be refused locally, or between a catalog's load and the requests that
    should find it cached. ``quiet_s`` is longer than the listener's debounce (~100 ms).
    """

    def count() -> int:
        return int(httpx.get(url + "/readyz", timeout=1.0).json()["listener"]["notifications"])

    last, since = count(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
    raise AssertionError(f"notifications still arriving at {url} after {timeout} s")
