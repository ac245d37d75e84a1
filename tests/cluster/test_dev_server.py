"""``make run`` as a newcomer uses it: ``gateway dev`` in a fresh folder (its own
``.pgdata``), then the CLI in the same folder without ``DATABASE_URL``.

One ``gateway dev`` serves the module (creating its database takes a while); the last
test stops it. ``gateway serve`` refusing what ``gateway dev`` admits runs on the
session's database, beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.db.localdb import LocalPostgres, free_port, local_url
from tests.support.harness import GatewayCluster
from tests.support.jobs_receiver import Receiver, set_endpoint
from tests.support.polling import eventually

START_TIMEOUT_S = 240.0  # initdb, migrations and the demo project on a busy machine
JOBS = "/v1/inhouse/jobs"
# what a newcomer's shell has: none of the variables that would change the answers
UNSET = ("DATABASE_URL", "DATABASE_DIRECT_URL", "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS")


def newcomer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class DevServer:
    folder: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def keys(self) -> dict[str, Any]:
        return dict(json.loads((self.folder / ".pgdata" / "demo-keys.json").read_text()))

    def database_url(self) -> str:
        return local_url(int((self.folder / ".pgdata" / "port").read_text()))

    def stop(self) -> int | None:
        """Ctrl-C, as in the terminal."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``gateway …`` in ``folder`` as a newcomer runs it: no DATABASE_URL."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=folder,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_dev(folder: Path, log_name: str) -> DevServer:
    """``gateway dev`` in ``folder`` on a free port, as a newcomer starts it, once it says
    it serves (its output in ``folder / log_name``)."""
    port = free_port()
    log_path = folder / log_name
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "dev", "--port", str(port)],
            cwd=folder,
            env=newcomer_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = DevServer(folder, port, process, log_path)
    started = eventually(
        lambda: "Serving on" in server.output() or process.poll() is not None,
        timeout=START_TIMEOUT_S,
        interval=0.2,
    )
    if not started or process.poll() is not None:
        server.stop()
        raise AssertionError(server.output())
    return server


@pytest.fixture(scope="module")
def dev() -> Iterator[DevServer]:
    # not under pytest's temporary folder: pytest (any session on the machine) resets it to
    # mode 0700, and as root the database runs as another user who must reach its data
    folder = Path(tempfile.mkdtemp(prefix="gateway-make-run-"))
    try:
        server = start_dev(folder, "gateway-dev.log")  # stops the server itself if it fails
        try:
            assert eventually(lambda: _answers(server.base_url), timeout=30), server.output()
            yield server
        finally:
            server.stop()
    finally:
        # whatever happened to the dev server, its database doesn't outlive the module
        LocalPostgres(folder / ".pgdata" / "data").stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_the_banner_shows_the_database_url_and_a_curl_that_works(dev: DevServer) -> None:
    banner = dev.output()
    exported = re.search(r"^  export DATABASE_URL=(\S+)$", banner, re.M)
    assert exported is not None, banner
    assert exported.group(1) == dev.database_url()
    assert "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS" in banner
    assert ".pgdata/mail.log" in banner

    # the printed curl, as printed
    curl = re.search(
        r"curl -s (\S+) \\\n\s+-H '([^']+)' \\\n\s+-H '([^']+)' \\\n\s+-d '([^']+)'", banner
    )
    assert curl is not None, banner
    url, authorization, content_type, body = curl.groups()
    headers = dict(h.split(": ", 1) for h in (authorization, content_type))
    answer = httpx.post(url, headers=headers, content=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["error"] is None and isinstance(answer.json()["data"], list)


def test_the_cli_uses_the_local_database_without_database_url(dev: DevServer) -> None:
    result = cli(dev.folder, "project", "get", "demo", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "demo"
    line = f"gateway: using the local database of make run: {dev.database_url()}"
    assert result.stderr == line + "\n"


def test_a_loopback_job_endpoint_is_admitted_and_delivered(
    dev: DevServer, receiver: Receiver
) -> None:
    # checked by the CLI (beside `make run`, the development default) ...
    result = cli(dev.folder, "jobs", "set-endpoint", "demo", receiver.url(), "--json")
    assert result.returncode == 0, result.stderr
    receiver.secrets.append(json.loads(result.stdout)["signing_secret"])
    # ... and again at delivery, by the dev server's workers
    headers = {"x-api-key": dev.keys()["server_key"]}
    enqueued = httpx.post(
        dev.base_url + JOBS, headers=headers, json={"name": "hello", "payload": {}}, timeout=10
    )
    assert enqueued.status_code == 201, enqueued.text
    job_id = enqueued.json()["data"]["job"]["id"]
    assert eventually(lambda: receiver.for_job(job_id), timeout=30), dev.output()
    assert receiver.for_job(job_id)[0].signature_ok


def test_magic_links_are_printed_and_kept_in_mail_log(dev: DevServer) -> None:
    asked = httpx.post(
        dev.base_url + "/v1/inhouse/auth/magic-link",
        headers={"x-api-key": dev.keys()["public_key"]},
        json={"email": "newcomer@example.test"},
        timeout=10,
    )
    assert asked.status_code == 200, asked.text
    mail_log = dev.folder / ".pgdata" / "mail.log"
    link = re.compile(r"magic link for newcomer@example\.test .*\?token=[A-Za-z0-9_-]+")
    assert eventually(lambda: mail_log.exists() and link.search(mail_log.read_text()), timeout=10)
    assert eventually(lambda: re.search("^mail: " + link.pattern, dev.output(), re.M), timeout=10)


def test_gateway_serve_refuses_a_loopback_job_endpoint(
    pg_url: str,
    make_project: Any,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = make_project()
    # the CLI with a DATABASE_URL: the production default
    env = {**newcomer_env(), "DATABASE_URL": pg_url}
    refused = subprocess.run(
        [sys.executable, "-m", "gateway", "jobs", "set-endpoint", project["name"], receiver.url()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "loopback" in refused.stderr, refused.stderr
    # set with the flag, delivered by a `gateway serve` without it: refused at delivery
    receiver.secrets.append(set_endpoint(pg_url, project["name"], receiver.url()))
    serve = GatewayCluster(
        database_url=pg_url,
        count=1,
        env={"GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "", "GATEWAY_JOBS_POLL_S": "0.5"},
        log_dir=tmp_path_factory.mktemp("serve-strict"),
    )
    serve.start()
    try:
        with httpx.Client(
            base_url=serve.urls[0], headers={"x-api-key": project["server_key"]}, timeout=10
        ) as c:
            job = c.post(JOBS, json={"name": "strict", "payload": {}, "maxAttempts": 1}).json()
            job_id = job["data"]["job"]["id"]

            def status() -> str:
                return str(c.get(f"{JOBS}/{job_id}").json()["data"]["job"]["status"])

            assert eventually(lambda: status() == "failed", timeout=30), serve.output()
            error = c.get(f"{JOBS}/{job_id}").json()["data"]["job"]["error"]
            assert "endpoint refused" in error and "loopback" in error
            assert receiver.for_job(job_id) == []
    finally:
        serve.stop()


def test_ctrl_c_stops_the_database_and_the_cli_says_so(dev: DevServer) -> None:
    """Last: it stops the module's dev server."""
    assert dev.stop() in (0, 130), dev.output()  # 130: interrupted, as after Ctrl-C
    assert "local database stopped" in dev.output()
    result = cli(dev.folder, "project", "get", "demo")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "not running" in result.stderr and "make run" in result.stderr


def test_sigterm_stops_the_database_too(dev: DevServer) -> None:
    """After the Ctrl-C test: ``gateway dev`` again in the same folder, ended the way a
    supervisor, ``kill`` or ``timeout`` ends it. uvicorn shuts down on SIGTERM and then
    raises it again, whose default action would end the process before the local
    database is stopped."""
    dev.stop()
    again = start_dev(dev.folder, "gateway-dev-sigterm.log")
    process = again.process
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM, again.output()
        assert "local database stopped" in again.output()
        assert not LocalPostgres(dev.folder / ".pgdata" / "data").is_running()
    finally:
        again.stop()
