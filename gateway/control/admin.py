"""The admin API's route table: method, path, request model, and the function it calls.

Each route is one ``AdminRoute`` (``admin_route.py``). ``call`` is a thin adapter onto
the function the CLI calls (``projects``, ``keys``, ``tables``, …): it unpacks the path
parameters and the validated body and does nothing else. Sync routes (the control code is
synchronous, as the CLI is)
run in a worker thread on a pooled connection (``gateway.db.bridge``); async routes get
the pool itself (for capabilities written async).

Adding a capability's routes (usage, auth users, jobs) is a few lines: define
``AdminRoute``\\s in the capability's package and add them to ``ROUTES`` below (or
``extend_routes`` them at import). The HTTP layer (``gateway/http/admin.py``), the
signature check and the OpenAPI document pick them up with nothing else to change.

Every answer is ``{"ok": true, "data": …}``; errors ``{"ok": false, "error": {"code",
"message", "field"?}}``.
"""

from __future__ import annotations

from typing import Any

from gateway.auth import admin as auth_admin
from gateway.cells import directory
from gateway.control import keys, openapi, projects, realtime_capture, table_changes, tables
from gateway.control.admin_models import (
    AccessUpdate,
    ColumnDefinition,
    JobListQuery,
    KeyCreate,
    PageQuery,
    ProjectCreate,
    ProjectDelete,
    ProjectListQuery,
    ProjectUpdate,
    RealtimeUpdate,
    TableDefinition,
)
from gateway.control.admin_route import AdminCall, AdminRoute
from gateway.db.bridge import run_sync
from gateway.db.pool import acquire
from gateway.jobs import rules as job_rules
from gateway.jobs import store as job_store
from gateway.quotas import store as quota_store

# --- adapters: path parameters and body in, the CLI's function out ------------------------


async def _openapi(c: AdminCall) -> Any:
    return openapi.document(ROUTES)


def _project(conn: Any, c: AdminCall) -> Any:
    return {**projects.get_project(conn, c.params["project"]), "cell": c.cell}


def _create_project(conn: Any, c: AdminCall) -> Any:
    args = c.body.as_args()
    args.pop("cell", None)  # chosen by the endpoint: ``conn`` is that cell's
    return {**projects.create_project(conn, **args).as_json(), "cell": c.cell}


def _list_cells(conn: Any, c: AdminCall) -> Any:
    return {"cells": [cell.as_json() for cell in directory.list_cells(conn)]}


def _list_projects(conn: Any, c: AdminCall) -> Any:
    # every cell's projects, home's first (the CLI's rule)
    return directory.list_every_cell(conn, limit=c.query.limit, offset=c.query.offset)


def _update_project(conn: Any, c: AdminCall) -> Any:
    # every limit goes in as a plan-field override, as ``gateway project set-limits`` does
    body = c.body
    return projects.set_limits(
        conn,
        c.params["project"],
        status=body.status,
        tier=body.tier,
        overrides=body.limit_overrides(),
    ).as_json()


def _delete_project(conn: Any, c: AdminCall) -> Any:
    return projects.delete_project(conn, c.params["project"], confirm=c.body.confirm)


def _create_key(conn: Any, c: AdminCall) -> Any:
    args = c.body.as_args()
    return keys.create_key(
        conn,
        c.params["project"],
        key_type=args["type"],
        scopes=args.get("scopes"),
        expires_in_s=args.get("expires_in"),
    )


def _list_keys(conn: Any, c: AdminCall) -> Any:
    return keys.list_keys(conn, c.params["project"])


def _revoke_key(conn: Any, c: AdminCall) -> Any:
    return keys.revoke_key(conn, c.params["key_id"], project=c.params["project"])


def _regenerate_key(conn: Any, c: AdminCall) -> Any:
    return keys.regenerate_key(conn, c.params["key_id"], project=c.params["project"])


def _list_tables(conn: Any, c: AdminCall) -> Any:
    return tables.list_tables(conn, c.params["project"])


def _create_table(conn: Any, c: AdminCall) -> Any:
    return tables.create_table_from_definition(conn, c.params["project"], c.body.as_args())


def _add_column(conn: Any, c: AdminCall) -> Any:
    p, definition = c.params, c.body.as_args()
    return table_changes.add_column_from_definition(conn, p["project"], p["table"], definition)


def _set_access(conn: Any, c: AdminCall) -> Any:
    p = c.params
    return table_changes.set_access(conn, p["project"], p["table"], **c.body.as_args())


def _set_realtime(conn: Any, c: AdminCall) -> Any:
    p = c.params
    return realtime_capture.set_realtime(conn, p["project"], p["table"], enabled=c.body.enabled)


def _drop_table(conn: Any, c: AdminCall) -> Any:
    return tables.drop_table(conn, c.params["project"], c.params["table"])


# quotas (issue 14): a project's usage and the plans, the CLI's functions again
def _usage(conn: Any, c: AdminCall) -> Any:
    return quota_store.usage(conn, projects.find_project(conn, c.params["project"]).id)


def _list_plans(conn: Any, c: AdminCall) -> Any:
    return quota_store.list_plans(conn)


# auth users (issue 17): the ``gateway auth`` commands' functions (gateway.auth.admin)
def _list_users(conn: Any, c: AdminCall) -> Any:
    q = c.query
    return auth_admin.list_users(conn, c.params["project"], limit=q.limit, offset=q.offset)


def _logout_user(conn: Any, c: AdminCall) -> Any:
    return auth_admin.logout(conn, c.params["project"], c.params["user_id"])


def _force_reset_user(conn: Any, c: AdminCall) -> Any:
    return auth_admin.force_reset(conn, c.params["project"], c.params["user_id"])


# jobs (issue 13): the jobs API's own parser and store functions (gateway.jobs), on a
# pooled connection; the project reference is resolved as every admin route resolves it
async def _project_id(c: AdminCall) -> str:
    assert c.pool is not None
    project = await run_sync(c.pool, projects.find_project, c.params["project"])
    return str(project.id)


async def _jobs_page(c: AdminCall, params: dict[str, str]) -> Any:
    project_id = await _project_id(c)
    q = job_rules.parse_list(params)
    assert c.pool is not None
    async with acquire(c.pool) as conn:
        jobs, total = await job_store.list_jobs(conn, project_id, q)
    return {"jobs": jobs, "total": total, "hasMore": q.offset + len(jobs) < total}


async def _list_jobs(c: AdminCall) -> Any:
    return await _jobs_page(c, c.query.as_params())


async def _list_failed_jobs(c: AdminCall) -> Any:
    return await _jobs_page(c, {**c.query.as_params(), "status": "failed"})


async def _retry_job(c: AdminCall) -> Any:
    project_id = await _project_id(c)
    job_id = job_rules.check_uuid(c.params["job_id"])
    assert c.pool is not None
    async with acquire(c.pool) as conn:
        return {"job": await job_store.retry_job(conn, project_id, job_id)}


P = "/projects/{project}"

ROUTES: list[AdminRoute] = [
    AdminRoute("GET", "/openapi.json", _openapi, "This document (OpenAPI 3.1)", "meta",
               is_async=True, raw=True, operation_id="openapi"),
    # projects
    AdminRoute("POST", "/projects", _create_project, "Create a project", "projects",
               body=ProjectCreate, status=201, operation_id="createProject"),
    AdminRoute("GET", "/projects", _list_projects, "List projects (paged)", "projects",
               query=ProjectListQuery, operation_id="listProjects"),
    AdminRoute("GET", P, _project, "Get a project (and its cell)", "projects",
               operation_id="getProject"),
    AdminRoute("GET", "/cells", _list_cells, "List the cells (URLs redacted)", "cells",
               operation_id="listCells"),
    AdminRoute("PATCH", P, _update_project, "Set a project's limits, plan or status",
               "projects", body=ProjectUpdate, operation_id="updateProject"),
    AdminRoute("DELETE", P, _delete_project, "Delete a project (schema, tables, role, keys)",
               "projects", body=ProjectDelete, operation_id="deleteProject"),
    # keys
    AdminRoute("POST", P + "/keys", _create_key, "Create an API key (returned once)", "keys",
               body=KeyCreate, status=201, operation_id="createKey"),
    AdminRoute("GET", P + "/keys", _list_keys, "List a project's keys (no secrets)", "keys",
               operation_id="listKeys"),
    AdminRoute("POST", P + "/keys/{key_id}/revoke", _revoke_key, "Revoke a key", "keys",
               operation_id="revokeKey"),
    AdminRoute("POST", P + "/keys/{key_id}/regenerate", _regenerate_key,
               "Revoke a key and issue its replacement (returned once)", "keys", status=201,
               operation_id="regenerateKey"),
    # tables
    AdminRoute("GET", P + "/tables", _list_tables, "List a project's tables", "tables",
               operation_id="listTables"),
    AdminRoute("POST", P + "/tables", _create_table, "Create a table from a definition",
               "tables", body=TableDefinition, status=201, operation_id="createTable"),
    AdminRoute("POST", P + "/tables/{table}/columns", _add_column, "Add a column", "tables",
               body=ColumnDefinition, status=201, operation_id="addColumn"),
    AdminRoute("PATCH", P + "/tables/{table}/access", _set_access,
               "Set a table's or a column's access flags", "tables", body=AccessUpdate,
               operation_id="setAccess"),
    AdminRoute("PUT", P + "/tables/{table}/realtime", _set_realtime,
               "Turn realtime capture on or off", "tables", body=RealtimeUpdate,
               operation_id="setRealtime"),
    AdminRoute("DELETE", P + "/tables/{table}", _drop_table, "Drop a table", "tables",
               operation_id="dropTable"),
    # usage (issue 14)
    AdminRoute("GET", P + "/usage", _usage,
               "Usage: requests today, bandwidth this month, database size, job runs",
               "usage", operation_id="getUsage"),
    AdminRoute("GET", "/plans", _list_plans, "List the plans and their limits", "usage",
               operation_id="listPlans"),
    # auth users (issue 17): gateway auth users|logout|force-reset
    AdminRoute("GET", P + "/users", _list_users, "List a project's end users (paged)",
               "users", query=PageQuery, operation_id="listUsers"),
    AdminRoute("POST", P + "/users/{user_id}/logout", _logout_user,
               "Log a user out everywhere (revoke every session)", "users",
               operation_id="logoutUser",
               description="Takes effect on every instance on the user's next request: "
               "sessions are read from the database on every request, never cached."),
    AdminRoute("POST", P + "/users/{user_id}/force-reset", _force_reset_user,
               "Clear a user's password and revoke their sessions", "users",
               operation_id="forceResetUser",
               description="The user signs in again by magic link; the password stays "
               "cleared (passwordResetRequired) until they set a new one."),
    # jobs (issue 13): the jobs API's list and retry, for any project
    AdminRoute("GET", P + "/jobs", _list_jobs, "List a project's jobs (the jobs API's filters)",
               "jobs", query=JobListQuery, is_async=True, operation_id="listJobs"),
    AdminRoute("GET", P + "/jobs/failed", _list_failed_jobs, "List a project's failed jobs",
               "jobs", query=JobListQuery, is_async=True, operation_id="listFailedJobs",
               description="The list with `status=failed` whatever `status` says."),
    AdminRoute("POST", P + "/jobs/{job_id}/retry", _retry_job,
               "Retry a failed job (attempts start again from 0)", "jobs", is_async=True,
               operation_id="retryJob"),
]  # fmt: skip


def extend_routes(routes: list[AdminRoute]) -> None:
    """For a capability that registers its admin routes from its own package."""
    ROUTES.extend(routes)
