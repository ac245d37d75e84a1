"""A gateway for the JavaScript client's tests (clients/js/test/): real processes, real data.

``python -m tests.support.js_launcher [--receiver URL]`` starts the embedded PostgreSQL
(or uses ``TEST_DATABASE_URL``), migrates it, creates a project with the demo ``todos``
table and the owner table ``notes``, its public and server keys, a second project limited
to 2 requests a minute (for 429s), points the project's jobs at ``--receiver`` (the Node
test's own HTTP receiver), and starts 2 ``gateway serve`` instances. It prints ONE line
of JSON on stdout — the URLs, keys, the jobs signing secret, the database URL — and then
runs until its stdin closes (the Node test ends it by closing the pipe, or by exiting),
when it stops the instances and removes the database.

Node tests drive the same processes the Python cluster tests do (``tests/support/
harness.py``), so the client is tested against the gateway as deployed, not a stub.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from gateway.control import tabledef
from gateway.control.keys import create_key
from gateway.control.projects import connect, create_project
from gateway.control.tables import create_table
from gateway.db import migrate
from gateway.jobs.commands import set_endpoint
from gateway.settings import Settings
from tests.support.harness import GatewayCluster
from tests.support.owner_rows import NOTES_TABLE
from tests.support.tables import TODOS_TABLE

# the gateway's settings for the client tests: jobs may reach the receiver on localhost,
# magic-link tokens come back in the answer (no mail server), an old session token stops
# working at once after a refresh (the test checks the old one is refused)
INSTANCE_ENV = {
    "GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS": "true",
    "GATEWAY_AUTH_MAGIC_LINK_RETURN_TOKEN": "true",
    "GATEWAY_AUTH_REFRESH_GRACE_S": "0",
    "GATEWAY_JOBS_POLL_S": "0.2",
    "GATEWAY_CORS_ORIGINS": "*",
    # every test signs up its own users from one address
    "GATEWAY_AUTH_SIGN_UP_LIMIT": "10000",
    "GATEWAY_AUTH_SIGN_IN_LIMIT": "10000",
}


def _project(url: str, *, rate_limit_per_minute: int = 100_000) -> dict[str, Any]:
    with connect(url) as conn:
        project = create_project(
            conn, f"js-{uuid.uuid4().hex[:10]}", rate_limit_per_minute=rate_limit_per_minute
        )
        create_table(conn, project.id, tabledef.parse_table(TODOS_TABLE))
        create_table(conn, project.id, tabledef.parse_table(NOTES_TABLE))
        public = create_key(conn, project.id, key_type="public")
        server = create_key(conn, project.id, key_type="server")
    return {"id": project.id, "publicKey": public["key"], "serverKey": server["key"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receiver", help="the URL jobs are delivered to")
    parser.add_argument("--instances", type=int, default=2)
    args = parser.parse_args()

    root: Path | None = None
    server = None
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url:
        from gateway.db.localdb import LocalPostgres

        root = Path(tempfile.mkdtemp(prefix="gateway-js-pg-"))
        root.chmod(0o755)
        server = LocalPostgres(root / "data", durable=False, max_connections=100)
        server.start()
        url = server.url
    cluster: GatewayCluster | None = None
    try:
        migrate.upgrade(url)
        main_project = _project(url)
        limited = _project(url, rate_limit_per_minute=2)
        secret = None
        if args.receiver:
            settings = dataclasses.replace(
                Settings(database_url=url), jobs_allow_private_targets=True
            )
            with connect(url) as conn:
                secret = set_endpoint(conn, settings, main_project["id"], args.receiver)[
                    "signing_secret"
                ]
        log_dir = Path(tempfile.mkdtemp(prefix="gateway-js-logs-"))
        cluster = GatewayCluster(url, args.instances, INSTANCE_ENV, log_dir, name="js")
        cluster.start()
        print(
            json.dumps(
                {
                    "urls": cluster.urls,
                    "project": main_project,
                    "limited": limited,
                    "signingSecret": secret,
                    "databaseUrl": url,
                    "logDir": str(log_dir),
                }
            ),
            flush=True,
        )
        sys.stdin.read()  # until the Node test closes the pipe (or exits)
    finally:
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.destroy()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
