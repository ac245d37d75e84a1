"""The foundation: settings, migrations and the provisioning CLI.

The same foundation served by real gateway processes: tests/cluster/test_health.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.db import migrate
from gateway.settings import Settings, SettingsError
from tests.support.cli import assert_refused, cli_json, run_cli
from tests.support.scratchdb import scratch_database
from tests.support.tables import TODOS_TABLE

# --- settings ---------------------------------------------------------------------------


def test_settings_defaults_and_direct_url() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://x/y"})
    assert settings.direct_url == "postgresql://x/y"
    assert settings.statement_timeout_ms == 10_000
    assert settings.rate_limit_window_s == 60
    assert settings.cors_origins == ("*",)
    direct = Settings.from_env({"DATABASE_URL": "a", "DATABASE_DIRECT_URL": "b"})
    assert direct.direct_url == "b"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_STATEMENT_TIMEOUT_MS", "soon"),
        ("GATEWAY_POOL_TIMEOUT_S", "-1"),
        ("GATEWAY_RATE_LIMIT_ALGORITHM", "token-bucket"),
        ("GATEWAY_TRUSTED_PROXIES", "not-an-ip"),
        ("GATEWAY_INSTANCES", "0"),
    ],
)
def test_invalid_setting_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        Settings.from_env({"DATABASE_URL": "postgresql://x/y", name: value})
    assert name in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_serve_without_database_url_fails_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_DIRECT_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        cwd=tmp_path,  # a folder without the local database of `make run` (.pgdata)
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_refused(result, "DATABASE_URL")


# --- migrations ----------------------------------------------------------------------------


def test_upgrade_downgrade_upgrade(pg_url: str) -> None:
    with scratch_database(pg_url, "mig") as url:
        migrate.upgrade(url)
        migrate.downgrade(url, "base")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('gateway.projects')").fetchone() == (None,)
        migrate.upgrade(url)
        with psycopg.connect(url) as conn:
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'gateway'"
                ).fetchall()
            }
        assert {"projects", "api_keys", "table_registry", "column_registry"} <= tables


# --- provisioning CLI ----------------------------------------------------------------------


def test_cli_provisioning_flow(pg_url: str, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    project = cli_json(
        pg_url,
        "project",
        "create",
        name,
        "--tier",
        "starter",
        "--rate-limit-per-minute",
        "7",
        "--requests-per-day",
        "70",
    )
    assert set(project) == {
        "id",
        "name",
        "schema_name",
        "tier",
        "rate_limit_per_minute",
        "requests_limit_daily",
        "cell",  # where it was placed (docs/cells.md): home when there is no other cell
    }
    assert project["name"] == name and project["tier"] == "starter"
    assert project["rate_limit_per_minute"] == 7 and project["requests_limit_daily"] == 70
    assert project["schema_name"].startswith("p_") and len(project["schema_name"]) == 14

    limits = cli_json(pg_url, "project", "set-limits", project["id"], "--requests-per-day", "99")
    assert limits["requests_limit_daily"] == 99 and limits["rate_limit_per_minute"] == 7

    key = cli_json(pg_url, "key", "create", name, "--type", "server", "--scopes", "read")
    assert key["key"].startswith("sheen_sk_") and len(key["key"]) >= 9 + 32
    assert key["prefix"] == key["key"][:12] and key["scopes"] == ["read"]
    public = cli_json(pg_url, "key", "create", name, "--type", "public", "--expires-in", "60")
    assert public["key"].startswith("sheen_pk_") and public["expires_at"]

    definition = tmp_path / "todos.json"
    definition.write_text(json.dumps(TODOS_TABLE))
    created = cli_json(pg_url, "table", "create", name, "--file", str(definition))
    assert created["table"] == "todos"

    with psycopg.connect(pg_url) as conn:
        stored = conn.execute(
            "SELECT key_hash, key_prefix FROM gateway.api_keys WHERE id = %s", [key["id"]]
        ).fetchone()
        assert stored is not None and key["key"] not in stored
        columns = conn.execute(
            """SELECT c.name, c.is_sensitive, c.allow_client_read
                 FROM gateway.column_registry c JOIN gateway.table_registry t ON t.id = c.table_id
                WHERE t.project_id = %s ORDER BY c.ordinal""",
            [project["id"]],
        ).fetchall()
        assert [c[0] for c in columns][:3] == ["id", "title", "done"]
        assert ("owner_email", True, True) in columns
        assert ("internal_note", False, False) in columns
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = 'todos'",
            [project["schema_name"]],
        ).fetchone()
        assert owner == (project["schema_name"],)

    revoked = cli_json(pg_url, "key", "revoke", key["id"])
    assert revoked == {"id": key["id"], "status": "revoked"}


@pytest.mark.parametrize(
    ("definition", "fragment"),
    [
        (
            {
                "name": "Bad-Name",
                "columns": [{"name": "id", "type": "bigint", "primary_key": True}],
            },
            "not a valid name",
        ),
        (
            {"name": "t", "columns": [{"name": "id", "type": "money", "primary_key": True}]},
            "not allowed",
        ),
        ({"name": "t", "columns": [{"name": "id", "type": "bigint"}]}, "primary key"),
        (
            {
                "name": "t",
                "columns": [
                    {"name": "id", "type": "bigint", "primary_key": True},
                    {"name": "x", "type": "text", "default": "now()"},
                ],
            },
            "now()",
        ),
        (
            {
                "name": "t",
                "columns": [{"name": "id; drop table x", "type": "bigint", "primary_key": True}],
            },
            "not a valid name",
        ),
        (
            {
                "name": "t",
                "columns": [
                    {"name": "id", "type": "bigint); drop table x; --", "primary_key": True}
                ],
            },
            "not allowed",
        ),
        (
            {
                "name": "t",
                "columns": [
                    {"name": "id", "type": "bigint", "primary_key": True},
                    {"name": "id", "type": "text"},
                ],
            },
            "twice",
        ),
    ],
)
def test_table_create_refuses_bad_definitions(
    pg_url: str, tmp_path: Path, definition: dict[str, Any], fragment: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    cli_json(pg_url, "project", "create", name)
    path = tmp_path / "def.json"
    path.write_text(json.dumps(definition))
    assert_refused(run_cli(pg_url, "table", "create", name, "--file", str(path)), fragment)
    with psycopg.connect(pg_url) as conn:
        count = conn.execute(
            """SELECT count(*) FROM gateway.table_registry t JOIN gateway.projects p
                 ON p.id = t.project_id WHERE p.name = %s""",
            [name],
        ).fetchone()
    assert count == (0,)


def test_cli_bad_input_is_one_line_exit_2(pg_url: str, tmp_path: Path) -> None:
    name = f"dup-{uuid.uuid4().hex[:8]}"
    cli_json(pg_url, "project", "create", name)
    assert_refused(run_cli(pg_url, "project", "create", name), "already exists")
    assert_refused(run_cli(pg_url, "project", "create", "bad name!"), "not valid")
    assert_refused(run_cli(pg_url, "project", "create", "x", "--tier", "gold"), "tier")
    assert_refused(
        run_cli(pg_url, "project", "set-limits", "nope", "--requests-per-day", "1"), "no project"
    )
    assert_refused(
        run_cli(pg_url, "project", "set-limits", name, "--requests-per-day", "-5"),
        "requests-per-day",
    )
    assert_refused(run_cli(pg_url, "key", "create", name, "--type", "root"), "--type")
    assert_refused(
        run_cli(pg_url, "key", "create", name, "--type", "public", "--scopes", "all"), "--scopes"
    )
    assert_refused(run_cli(pg_url, "key", "revoke", "not-a-uuid"), "not a key id")
    assert_refused(run_cli(pg_url, "key", "revoke", str(uuid.uuid4())), "no key")
    assert_refused(
        run_cli(pg_url, "table", "create", name, "--file", str(tmp_path / "none")), "can't read"
    )
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert_refused(run_cli(pg_url, "table", "create", name, "--file", str(junk)), "not valid JSON")
    assert_refused(run_cli(pg_url, "frobnicate"), "invalid choice")
