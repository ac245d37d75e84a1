"""``gateway worker`` (workers without HTTP), ``gateway jobs stats`` and the pool plan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support.cli import cli_json
from tests.support.harness import GatewayCluster
from tests.support.jobs_receiver import JOBS, Receiver, set_endpoint
from tests.support.polling import eventually


def test_worker_process_delivers_for_serve_without_workers(
    pg_url: str, make_project: Any, tmp_path: Path
) -> None:
    project = make_project()
    with Receiver() as receiver:
        receiver.secrets.append(set_endpoint(pg_url, project["name"], receiver.url()))
        serve = GatewayCluster(
            database_url=pg_url,
            count=1,
            env={"GATEWAY_JOBS_CONCURRENCY": "0"},
            log_dir=tmp_path,
        )
        serve.start()
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "gateway", "worker"],
            env={
                **os.environ,
                "DATABASE_URL": pg_url,
                "GATEWAY_INSTANCE_ID": "only-worker",
                "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true",
                "GATEWAY_INSTANCES": "2",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(
                base_url=serve.urls[0], headers={"x-api-key": project["server_key"]}, timeout=10
            ) as c:
                ids = [
                    c.post(JOBS, json={"name": "w", "payload": {"n": i}}).json()["data"]["job"][
                        "id"
                    ]
                    for i in range(5)
                ]
                assert eventually(
                    lambda: all(
                        c.get(f"{JOBS}/{i}").json()["data"]["job"]["status"] == "completed"
                        for i in ids
                    ),
                    timeout=30,
                ), (tmp_path / "worker.log").read_text()
            assert {d.job_id for d in receiver.snapshot()} >= set(ids)
            stats = cli_json(pg_url, "jobs", "stats")
            assert stats["depth"]["completed"] >= 5
            assert any(p["project"] == project["name"] for p in stats["runs_this_month"])
        finally:
            worker.terminate()
            worker.wait(20)
            log.close()
            serve.stop()
        assert worker.returncode == 0, (tmp_path / "worker.log").read_text()


def test_pool_plan_shows_the_worker_connections(pg_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": pg_url, "GATEWAY_JOBS_CONCURRENCY": "10"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "pool-plan", "--max-connections", "104"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "jobs worker and cron hold at most 2" in result.stdout
    plan = cli_json(pg_url, "pool-plan", "--max-connections", "104")
    assert plan["jobs_worker_connections"] == 2


def test_notify_wakes_an_idle_worker(pg_url: str, make_project: Any, tmp_path: Path) -> None:
    """With polling every 10 minutes, only the NOTIFY heard on the instance's listener
    connection can get these jobs delivered within the wait below."""
    project = make_project()
    with Receiver() as receiver:
        receiver.secrets.append(set_endpoint(pg_url, project["name"], receiver.url()))
        serve = GatewayCluster(
            database_url=pg_url,
            count=1,
            env={"GATEWAY_JOBS_POLL_S": "600", "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true"},
            log_dir=tmp_path,
        )
        serve.start()
        try:
            with httpx.Client(
                base_url=serve.urls[0], headers={"x-api-key": project["server_key"]}, timeout=10
            ) as c:
                for i in range(3):
                    job_id = c.post(JOBS, json={"name": "n", "payload": {"i": i}}).json()["data"][
                        "job"
                    ]["id"]
                    assert eventually(lambda job_id=job_id: receiver.for_job(job_id), timeout=20)
        finally:
            serve.stop()
