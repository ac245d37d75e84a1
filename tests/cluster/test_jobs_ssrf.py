"""SSRF refusals: at set-endpoint (a real ``gateway jobs set-endpoint``) and at every
delivery (a real ``gateway serve`` without GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS), and
redirects that are never followed.

Its own module: no other module's instances (which allow private targets) may be
running and claim these jobs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.support.harness import GatewayCluster
from tests.support.jobs_receiver import JOBS, JOBS_ENV, Receiver, set_endpoint
from tests.support.polling import eventually


def run_set_endpoint(
    pg_url: str, project: str, url: str, allow: bool
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": pg_url,
        "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true" if allow else "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway", "jobs", "set-endpoint", project, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def private_hostname() -> str | None:
    """This machine's name when it resolves to a private (not loopback) address."""
    import ipaddress

    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return None
    addresses = {ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos}
    if addresses and all(a.is_private and not a.is_loopback for a in addresses):
        return name
    return None


def test_set_endpoint_ssrf_refusals(make_project: Any, pg_url: str) -> None:
    name = make_project()["name"]
    cases = [
        ("http://127.0.0.1:9/x", False, "loopback"),
        ("http://localhost:9/x", False, "resolves to"),
        ("http://10.0.0.7/x", False, "private"),
        ("http://[::1]/x", False, "loopback"),
        ("http://169.254.169.254/latest/meta-data", False, "link-local"),
        ("http://169.254.169.254/latest/meta-data", True, "link-local"),
        ("http://[fe80::1]/x", True, "link-local"),
        ("http://0.0.0.0:9/x", True, "unspecified"),
        ("ftp://example.com/x", True, "http"),
        ("http://user:pw@example.com/x", True, "credentials"),
        ("not a url", True, "http"),
        # IPv4 wrapped in IPv6: 6to4, NAT64 and Teredo are judged by the IPv4 they reach
        ("http://[2002:7f00:1::1]/x", False, "loopback"),
        ("http://[64:ff9b::7f00:1]/x", False, "loopback"),
        ("http://[2001:0:808:808:0:0:5601:5601]/x", True, "link-local"),
        ("http://[2002:a9fe:a9fe::1]/x", True, "link-local"),
    ]
    host = private_hostname()
    if host is not None:
        cases.append((f"http://{host}:9/x", False, "private"))
    for url, allow, fragment in cases:
        result = run_set_endpoint(pg_url, name, url, allow)
        assert result.returncode == 2, (url, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and fragment in result.stderr, (url, result.stderr)
    assert run_set_endpoint(pg_url, name, "http://127.0.0.1:9/x", True).returncode == 0


def test_delivery_time_ssrf_and_redirects(
    pg_url: str,
    make_project: Any,
    receiver: Receiver,
    db: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # set with the flag, delivered by an instance without it: refused at delivery
    strict = GatewayCluster(
        database_url=pg_url,
        count=1,
        env={**JOBS_ENV, "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "false"},
        log_dir=tmp_path_factory.mktemp("jobs-ssrf"),
    )
    project = make_project()
    receiver.secrets.append(set_endpoint(pg_url, project["name"], receiver.url(host="localhost")))
    redirecting = make_project()
    receiver.secrets.append(set_endpoint(pg_url, redirecting["name"], receiver.url()))
    strict.start()
    try:
        with httpx.Client(
            base_url=strict.urls[0], headers={"x-api-key": project["server_key"]}, timeout=10
        ) as c:
            job = c.post(JOBS, json={"name": "ssrf", "payload": {}, "maxAttempts": 1}).json()
            job_id = job["data"]["job"]["id"]
            assert eventually(
                lambda: c.get(f"{JOBS}/{job_id}").json()["data"]["job"]["status"] == "failed",
                timeout=20,
            )
            error = c.get(f"{JOBS}/{job_id}").json()["data"]["job"]["error"]
            assert "endpoint refused" in error
            assert "127.0.0.1" in error or "::1" in error
            assert receiver.for_job(job_id) == []
    finally:
        strict.stop()
    # a redirect is never followed (the flag is on here, so only the redirect refuses)
    c2 = GatewayCluster(
        database_url=pg_url, count=1, env=JOBS_ENV, log_dir=tmp_path_factory.mktemp("jobs-redirect")
    )
    c2.start()
    try:
        with httpx.Client(
            base_url=c2.urls[0], headers={"x-api-key": redirecting["server_key"]}, timeout=10
        ) as c:
            target = receiver.url("/followed")
            job = c.post(
                JOBS, json={"name": "r", "payload": {"redirect": target}, "maxAttempts": 1}
            ).json()
            job_id = job["data"]["job"]["id"]
            assert eventually(
                lambda: c.get(f"{JOBS}/{job_id}").json()["data"]["job"]["status"] == "failed",
                timeout=20,
            )
            error = c.get(f"{JOBS}/{job_id}").json()["data"]["job"]["error"]
            assert "redirect" in error
            assert len(receiver.for_job(job_id)) == 1  # the redirect target saw nothing more
    finally:
        c2.stop()
