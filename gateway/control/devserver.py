"""``gateway dev`` (what ``make run`` runs): a local database, the demo project, the server.

The demo's keys are kept in ``<data>/demo-keys.json`` (git-ignored with the data) because
only their hashes are in the database: later runs print the same keys again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from gateway.control import tabledef
from gateway.control.errors import NotFoundError
from gateway.control.keys import create_key
from gateway.control.projects import connect, create_project, find_project
from gateway.control.tables import create_table
from gateway.db import migrate
from gateway.db.localdb import LocalPostgres
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


def start_local_database(data_root: Path) -> LocalPostgres:
    data_root.mkdir(parents=True, exist_ok=True)
    port_file = data_root / "port"
    port = int(port_file.read_text()) if port_file.exists() else None
    server = LocalPostgres(data_root / "data", port=port)
    server.start()
    port_file.write_text(str(server.port))
    return server


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


def banner(keys: dict[str, Any], base_url: str, *, local_database: bool) -> str:
    body = '{"query":{"operation":"select","table":"todos","limit":5}}'
    return "\n".join(
        [
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
            f"Serving on {base_url} (Ctrl-C stops the server"
            + (" and the local database)" if local_database else ")"),
            "",
        ]
    )


def run(host: str, port: int, data_root: Path, app_factory: Callable[[Settings], Any]) -> None:
    """``app_factory`` is ``gateway.http.app.create_app``, handed in by ``gateway/cli.py``
    (nothing below the HTTP layer imports it)."""
    server: LocalPostgres | None = None
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url:
        server = start_local_database(data_root)
        database_url = server.url
        os.environ["DATABASE_URL"] = database_url
    try:
        settings = Settings.from_env()
        migrate.upgrade(settings.direct_url)
        keys = ensure_demo(settings.direct_url, data_root / "demo-keys.json")
        print(banner(keys, f"http://{host}:{port}", local_database=server is not None), flush=True)
        uvicorn.run(app_factory(settings), host=host, port=port, log_level="warning")
    finally:
        if server is not None:
            server.stop()
            print("local database stopped", flush=True)
