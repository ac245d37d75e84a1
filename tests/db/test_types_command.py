"""``gateway types``: the key's view of the schema as TypeScript, checked by ``tsc``.

The output must compile with the client (clients/js/src) under ``tsc --noEmit``, type
``from("todos")`` rows, filters and writes, and turn a wrong column into a compile error.
``tsc`` comes from the client's devDependencies: ``make client`` (``npm ci``) installs it;
without it (no Node on the machine) the compile checks are skipped with a message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import assert_refused, cli_json, run_cli

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js"
TSC = CLIENT / "node_modules" / ".bin" / "tsc"

GOOD_PROGRAM = """
import { createClient } from "easymode-client";
import type { Database } from "./database";

const em = createClient<Database>({ url: "http://127.0.0.1:8080", apiKey: "sheen_pk_x" });

export async function main(): Promise<void> {
  const r = await em.db.from("todos").select("id", "title", "tags").eq("done", false)
    .in("id", [1, 2]).order("created_at", { ascending: false }).limit(10).execute();
  if (r.data) {
    const title: string = r.data[0].title;
    const id: number = r.data[0].id;
    const tags: string[] | null = r.data[0].tags;
    void [title, id, tags];
    // @ts-expect-error: not selected
    void r.data[0].done;
  }
  await em.db.from("todos").insert({ title: "buy milk" }).returning(["id"]).execute();
  await em.db.from("todos").update({ done: true }).eq("id", 1).maxRows(1).execute();
  em.realtime.subscribe("todos", {}, (event) => void event.row?.title);
  // @ts-expect-error: no such column
  em.db.from("todos").select("titel");
  // @ts-expect-error: no such column in a filter
  em.db.from("todos").select().eq("nope", 1);
  // @ts-expect-error: a value of the wrong type
  em.db.from("todos").select().eq("done", "yes");
  // @ts-expect-error: title is required on insert (NOT NULL, no default)
  em.db.from("todos").insert({ done: true });
  // @ts-expect-error: a sensitive column is not in a public key's view
  em.db.from("todos").select("owner_email");
  // @ts-expect-error: no such table
  em.db.from("todoz");
}
"""

BAD_PROGRAM = """
import { createClient } from "easymode-client";
import type { Database } from "./database";

const em = createClient<Database>({ url: "http://127.0.0.1:8080", apiKey: "sheen_pk_x" });
export const wrong = em.db.from("todos").select("id").eq("titel", "buy milk");
"""


def _types(pg_url: str, *args: str) -> str:
    result = run_cli(pg_url, "types", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _tsc(folder: Path, program: str, database: str) -> subprocess.CompletedProcess[str]:
    if not TSC.exists() or shutil.which("node") is None:
        pytest.skip("tsc is not installed: run `make client` (needs node and npm)")
    (folder / "database.ts").write_text(database)
    (folder / "program.ts").write_text(program)
    config = {
        "compilerOptions": {
            "target": "ES2022", "module": "ES2022", "moduleResolution": "Bundler",
            "lib": ["ES2022", "DOM"], "strict": True, "noEmit": True, "skipLibCheck": True,
            "paths": {"easymode-client": [str(CLIENT / "src" / "index.ts")]},
        },
        "files": ["program.ts"],
    }  # fmt: skip
    (folder / "tsconfig.json").write_text(json.dumps(config))
    return subprocess.run(
        [str(TSC), "-p", str(folder / "tsconfig.json")],
        capture_output=True, text=True, timeout=120, cwd=folder,
    )  # fmt: skip


def test_public_view_types_rows_inserts_and_updates(pg_url: str, make_project: Any) -> None:
    project = make_project()
    out = _types(pg_url, project["name"])
    assert "export interface Database" in out
    assert "todos: {" in out
    # Row: every readable column, nullable ones with | null
    assert "        title: string;" in out  # NOT NULL
    assert "        done: boolean | null;" in out
    assert "        tags: string[] | null;" in out
    assert "        meta: Json | null;" in out
    assert "        id: number;" in out
    # Insert: identity / default / nullable columns are optional, title is not
    insert = out.split("Insert: {")[1].split("};")[0]
    assert "        title: string;" in insert
    assert "        id?: number;" in insert
    assert (
        "        created_at?: string | null;" in insert or "        created_at?: string;" in insert
    )
    # a public key sees neither the sensitive column nor the closed one
    assert "owner_email" not in out.split("Insert: {")[0]
    assert "internal_note" not in out


def test_a_server_key_sees_more_and_a_foreign_key_is_refused(
    pg_url: str, make_project: Any
) -> None:
    project = make_project()
    out = _types(pg_url, project["name"], "--key", project["server_key"])
    row = out.split("Row: {")[1].split("};")[0]
    assert "owner_email: string | null;" in row
    assert "internal_note" not in row  # closed to every key for reading
    assert "internal_note?: string | null;" in out.split("Insert: {")[1].split("};")[0]
    other = make_project()
    assert_refused(run_cli(pg_url, "types", project["name"], "--key", other["server_key"]),
                   "not an active key of this project")  # fmt: skip
    assert_refused(run_cli(pg_url, "types", "no-such-project"), "no-such-project")
    as_json = cli_json(pg_url, "types", project["name"], "--key", project["server_key"])
    assert as_json["key_type"] == "server" and as_json["typescript"] == out


def test_types_compile_and_a_wrong_column_does_not(
    pg_url: str, make_project: Any, tmp_path: Path
) -> None:
    project = make_project()
    database = _types(pg_url, project["name"])
    good = _tsc(tmp_path, GOOD_PROGRAM, database)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = _tsc(tmp_path, BAD_PROGRAM, database)
    assert bad.returncode != 0
    assert "program.ts(6," in bad.stdout and '"titel"' in bad.stdout, bad.stdout
