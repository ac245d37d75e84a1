"""``gateway dev`` (what ``make run`` runs): a local database, the demo project, the server.

The demo's keys are kept in ``<data>/demo-keys.json`` (git-ignored with the data) because
only their hashes are in the database: later runs print the same keys again.

It is a server to develop an app against, so two defaults differ from ``gateway serve``
(and the banner says both):

- job endpoints on loopback and private addresses are admitted
  (``GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS`` defaults to true): the app's job receiver runs
  on ``localhost`` too. Link-local and cloud-metadata addresses stay refused.
- without ``GATEWAY_SMTP_URL`` nobody receives the magic links, so each one is printed in
  the terminal (``mail: …``) and appended to ``<data>/mail.log``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from gateway.auth.mail import UNSENT_MAIL_LOGGER
from gateway.control import tabledef
from gateway.control.errors import NotFoundError
from gateway.control.keys import create_key
from gateway.control.projects import connect, create_project, find_project
from gateway.control.tables import create_table
from gateway.db import migrate
from gateway.db.localdb import LocalPostgres, start_in
from gateway.http.protocol import OneSendHttpToolsProtocol
from gateway.settings import Settings

DEMO_PROJECT = "demo"
DEMO_TABLE: dict[str, Any] = {
    "name": "todos",
    "client_read": True,
    "client_write": True,
    "columns": [
        {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
        {"name": "title", "type": "text", "nullable": False},
        {"name": "done", "type": "boolean", "default": False},
        {"name": "tags", "type": "text[]"},
        {"name": "meta", "type": "jsonb"},
        {"name": "owner_email", "type": "text", "sensitive": True},
        {"name": "internal_note", "type": "text", "client_read": False, "client_write": False},
        {"name": "created_at", "type": "timestamptz", "default": "now()"},
    ],
}
MAIL_LOG = "mail.log"


def ensure_demo(database_url: str, keys_file: Path) -> dict[str, Any]:
    """Create the demo project, its table and keys once; afterwards read them back."""
    with connect(database_url) as conn:
        try:
            project = find_project(conn, DEMO_PROJECT)
        except NotFoundError:
            project = create_project(conn, DEMO_PROJECT)
            create_table(conn, project.id, tabledef.parse_table(DEMO_TABLE))
        saved: dict[str, Any] = {}
        if keys_file.exists():
            saved = json.loads(keys_file.read_text())
        if saved.get("project_id") != project.id:
            public = create_key(conn, project.id, key_type="public")
            server = create_key(conn, project.id, key_type="server")
            saved = {
                "project_id": project.id,
                "public_key": public["key"],
                "server_key": server["key"],
            }
            keys_file.parent.mkdir(parents=True, exist_ok=True)
            keys_file.write_text(json.dumps(saved, indent=2))
            keys_file.chmod(0o600)
    return saved


def print_unsent_mail(mail_log: Path) -> None:
    """Magic links that no SMTP server sends (``gateway.auth.mail`` logs them on
    ``UNSENT_MAIL_LOGGER``): printed with a ``mail:`` prefix and appended to ``mail_log``,
    so they can be found when the terminal has scrolled on."""
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter("mail: %(message)s"))
    kept = logging.FileHandler(mail_log, encoding="utf-8")
    kept.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger(UNSENT_MAIL_LOGGER)
    logger.addHandler(terminal)
    logger.addHandler(kept)
    logger.propagate = False  # printed once, here, not again by the default handler


def banner(
    keys: dict[str, Any],
    base_url: str,
    settings: Settings,
    *,
    local_database_url: str | None,
    mail_log: Path,
) -> str:
    body = '{"query":{"operation":"select","table":"todos","limit":5}}'
    lines = [
        "",
        "Easy Mode Gateway — demo project 'demo' (table 'todos')",
        f"  public key: {keys['public_key']}",
        f"  server key: {keys['server_key']}",
        "",
        "Try it:",
        f"  curl -s {base_url}/v1/inhouse/db/query \\",
        f"    -H 'Authorization: Bearer {keys['public_key']}' \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -d '{body}'",
        "",
    ]
    if local_database_url is not None:
        lines += [
            "The local database, for other tools (psql, scripts):",
            f"  export DATABASE_URL={local_database_url}",
            "The gateway CLI finds it by itself in this folder: .venv/bin/gateway project get demo",
            "",
        ]
    lines.append("Development defaults (gateway dev only; gateway serve keeps the strict ones):")
    if settings.jobs_allow_private_targets:
        lines.append(
            "  job endpoints on localhost and private addresses are allowed "
            "(GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS=false to refuse them)"
        )
    else:
        lines.append("  job endpoints on localhost and private addresses are refused (as set)")
    if settings.auth.smtp_url:
        lines.append("  magic links are mailed through GATEWAY_SMTP_URL")
    else:
        lines.append(
            f"  magic links are not mailed (no GATEWAY_SMTP_URL): printed here as 'mail: …' "
            f"and appended to {mail_log}"
        )
    lines += [
        "",
        f"Serving on {base_url} (Ctrl-C stops the server"
        + (" and the local database)" if local_database_url else ")"),
        "",
    ]
    return "\n".join(lines)


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM (a supervisor, ``kill``, ``timeout``) ends ``gateway dev`` as Ctrl-C does:
    through ``run``'s ``finally``, which stops the local database. Without it the signal's
    default action ends the process on the spot; uvicorn, which handles SIGTERM while it
    serves, raises it again after its graceful shutdown, with this handler back in place."""
    raise SystemExit(128 + signum)


def run(host: str, port: int, data_root: Path) -> None:
    """The local database, migrations, the demo project, the banner, then the server.

    uvicorn imports the app by name (``gateway.http.app:create_dev_app``, which reads the
    same development settings from the environment this function has just completed), so
    nothing below the HTTP layer imports it and the CLI starts without the HTTP stack."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    server: LocalPostgres | None = None
    if not os.environ.get("DATABASE_URL", ""):
        server = start_in(data_root)
        os.environ["DATABASE_URL"] = server.url
    try:
        settings = Settings.from_env(development=True)
        migrate.upgrade(settings.direct_url)
        keys = ensure_demo(settings.direct_url, data_root / "demo-keys.json")
        mail_log = data_root / MAIL_LOG
        print_unsent_mail(mail_log)
        text = banner(
            keys,
            f"http://{host}:{port}",
            settings,
            local_database_url=server.url if server else None,
            mail_log=mail_log,
        )
        print(text, flush=True)
        uvicorn.run(
            "gateway.http.app:create_dev_app",
            factory=True,
            host=host,
            port=port,
            log_level="warning",
            server_header=False,  # as `gateway serve`
            http=OneSendHttpToolsProtocol,  # as `gateway serve`
        )
    finally:
        if server is not None:
            server.stop()
            print("local database stopped", flush=True)
