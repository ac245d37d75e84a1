"""The two import rules of the layout that a test can check (README, "Module layout").

1. Only ``gateway/http/`` and the realtime stream endpoint know HTTP (import Starlette).
2. The pure parts never import psycopg: they have no I/O, so they are tested and fuzzed
   without a database and can't open a connection by accident.

Imports are read from the source (``ast``), including imports inside functions and
``TYPE_CHECKING`` blocks, so a lazy import can't slip past.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

HTTP_ALLOWED = {"http", "realtime/stream.py"}
PURE_MODULES = [
    "query/contract.py",
    "query/permissions.py",
    "query/compiler.py",
    "query/sqltext.py",
    "query/envelope.py",
    "admission/decision.py",
    "admission/headers.py",
    "admission/local_deny.py",
    "admission/gate.py",
    "metadata/catalog.py",
    "realtime/events.py",
    "realtime/filters.py",
    "realtime/sse.py",
    "auth/keys.py",
    "auth/bearer.py",
    "auth/rules.py",
    "auth/tokens.py",
    "auth/passwords.py",
    "auth/mail.py",
    "quotas/plans.py",
    "jobs/rules.py",
    "jobs/signing.py",
    "jobs/ssrf.py",
    "control/signing.py",
    "control/admin_models.py",
]


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_the_layout_has_one_package_per_capability() -> None:
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert {
        "http",
        "query",
        "admission",
        "metadata",
        "realtime",
        "db",
        "ops",
        "control",
        "auth",
    } <= (packages)
    flat = {p.name for p in PACKAGE.glob("*.py")}
    assert flat <= {"__init__.py", "__main__.py", "settings.py", "errors.py", "cli.py"}, flat


def test_only_http_and_the_stream_endpoint_import_starlette() -> None:
    offenders = []
    for path in _modules():
        rel = _relative(path)
        if rel.split("/", 1)[0] in HTTP_ALLOWED or rel in HTTP_ALLOWED:
            continue
        if any(_top(name) == "starlette" for name in _imports(path)):
            offenders.append(rel)
    assert offenders == [], f"Starlette imported outside http/: {offenders}"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_parts_never_import_psycopg(module: str) -> None:
    path = PACKAGE / module
    assert path.exists(), f"{module} was moved: update the list of pure modules"
    driver = sorted(name for name in _imports(path) if _top(name) in {"psycopg", "psycopg_pool"})
    assert driver == [], f"{module} imports {driver}"


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """The checks read real import statements, lazy ones included."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from psycopg import sql\n    import starlette.routing\n")
    assert {"psycopg", "starlette.routing"} <= _imports(sample)
