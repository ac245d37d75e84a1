"""The admin API's OpenAPI 3.1 document, generated from the route table (``admin.ROUTES``,
handed in by its ``/openapi.json`` route) and the request models' JSON Schemas (pydantic
emits JSON Schema 2020-12, which OpenAPI 3.1 uses as is).

Nothing here is written by hand per route: paths, parameters, bodies, examples and
statuses all come from the route table, so a route added there is documented at once.
Examples come from the models' ``examples``; a test sends every one through the API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.control.admin_route import AdminRoute
from gateway.control.signing import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

REF = "#/components/schemas/{model}"
PARAM_RE = re.compile(r"{([a-z_]+)}")
PARAM_DESCRIPTIONS = {
    "project": "the project's id (UUID) or name",
    "table": "the table's name",
    "key_id": "the key's id (UUID)",
    "user_id": "the end user's id (UUID)",
    "job_id": "the job's id (UUID)",
}
ERROR_STATUSES = {
    400: "invalid input: `error.field` names the field at fault when there is one",
    401: "missing, malformed, expired, replayed or wrong signature (never says which)",
    404: "no such project, key, table, user or job",
    409: "the name is taken, or the thing's state refuses the change",
    413: "the body is larger than 256 KB",
    503: "the database is unavailable; retry shortly",
}


def _envelope_schemas() -> dict[str, Any]:
    return {
        "Ok": {
            "type": "object",
            "required": ["ok", "data"],
            "properties": {"ok": {"const": True}, "data": {}},
        },
        "Error": {
            "type": "object",
            "required": ["ok", "error"],
            "properties": {
                "ok": {"const": False},
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": "string"},
                        "details": {},
                    },
                },
            },
        },
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    # the model's first example gives each parameter's example (the examples test sends it)
    example = (schema.get("examples") or [{}])[0]
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None) or model.__doc__ or ""
        prop.pop("title", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": description.strip(),
            "schema": prop,
        }
        if name in example:
            param["example"] = example[name]
        params.append(param)
    return params


def _operation(route: AdminRoute) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id or f"{route.method.lower()}{route.path}",
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": PARAM_DESCRIPTIONS.get(name, name),
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            }
            for name in PARAM_RE.findall(route.path)
        ],
        "responses": {
            str(route.status): {
                "description": "done",
                "content": {"application/json": {"schema": {"$ref": REF.format(model="Ok")}}},
            },
            **{
                str(status): {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": REF.format(model="Error")}}
                    },
                }
                for status, text in ERROR_STATUSES.items()
            },
        },
    }
    if route.description:
        op["description"] = route.description
    if route.query is not None:
        op["parameters"].extend(_query_parameters(route.query))
    if route.body is not None:
        schema = route.body.model_json_schema()
        examples = schema.get("examples", [])
        media: dict[str, Any] = {"schema": {"$ref": REF.format(model=route.body.__name__)}}
        if examples:
            media["examples"] = {f"example{i + 1}": {"value": v} for i, v in enumerate(examples)}
        op["requestBody"] = {"required": True, "content": {"application/json": media}}
    return op


def _build(routes: Sequence[AdminRoute]) -> dict[str, Any]:
    bodies = {r.body for r in routes if r.body is not None}
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(bodies, key=lambda m: m.__name__)], ref_template=REF
    )
    schemas = {**defs.get("$defs", {}), **_envelope_schemas()}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.full_path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Easy Mode Gateway admin API",
            "version": "1",
            "description": (
                "Provisioning of projects, keys and tables, plans and usage, a project's "
                "end users and jobs: the same functions as the "
                "`gateway` CLI. Every request is signed with HMAC-SHA256 (the original "
                "platform's v2 scheme); see docs/control.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "signature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": SIGNATURE_HEADER,
                    "description": (
                        "lower-case hex HMAC-SHA256 of METHOD\\nPATH[?sorted query]\\n"
                        f"TIMESTAMP\\nNONCE\\nBODY; with `{TIMESTAMP_HEADER}` (Unix seconds, "
                        f"±120 s) and `{NONCE_HEADER}` (single use)"
                    ),
                },
                "timestamp": {"type": "apiKey", "in": "header", "name": TIMESTAMP_HEADER},
                "nonce": {"type": "apiKey", "in": "header", "name": NONCE_HEADER},
            },
        },
        "security": [{"signature": [], "timestamp": [], "nonce": []}],
    }


# the built documents by route table (method, path): in practice one, rebuilt only when a
# capability extends the table
_DOCUMENTS: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}


def document(routes: Sequence[AdminRoute]) -> dict[str, Any]:
    """The document for a route table (cached while the table is unchanged).

    The table is a parameter, not an import: the table's own ``/openapi.json`` route
    calls this, so importing the table here would make the two modules a circle.
    """
    key = tuple((r.method, r.path) for r in routes)
    if key not in _DOCUMENTS:
        _DOCUMENTS[key] = _build(routes)
    return _DOCUMENTS[key]
