"""The layout is the architecture: these checks keep it so.

- ``hub/``'s top level is the contract a newcomer reads first; everything else lives in a
  subpackage named for its role.
- Plugins (built-in or third-party) import only from the ``hub`` façade.
- No shipped module reaches into another module's underscored names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hub

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("hub", "adapters", "signers")
PLUGINS = ("adapters", "signers", "examples/vendor-plugin")
# Underscored names outside the project's own modules, each used on purpose:
ALLOWED = {
    "os._exit",  # a worker whose hub died exits at once, without running the hub's cleanup
    "etree._Element",  # lxml's element and tree types, which it exports under these names only
    "etree._ElementTree",
    "http._retry_connection",  # aiohttp resends a request on a dropped keep-alive connection with the
                               # same signed nonce; there is no public switch (adapters/misa)
}


def _python_files(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (ROOT / root).rglob("*.py"))


def _defined_here(tree: ast.AST) -> set[str]:
    """Underscored names a module defines itself (attributes, functions, classes, assignments)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_")}


def foreign_private_uses(*roots: str) -> list[str]:
    """Every use of an underscored name that another module defines: ``path:line name``."""
    uses = []
    for path in _python_files(*roots):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = _defined_here(tree)
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        uses.append(f"{where}:{node.lineno} from {node.module} import {alias.name}")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr in own or ast.unparse(node) in ALLOWED:
                    continue
                uses.append(f"{where}:{node.lineno} {ast.unparse(node)}")
    return uses


def test_no_module_uses_another_modules_private_names():
    assert foreign_private_uses(*SHIPPED, "examples/vendor-plugin") == []


def test_the_scan_finds_a_private_use():
    # The check above must be able to fail: a module reaching into the engine is found.
    tree = "async def f(hub):\n    await hub._db(print)\n"
    path = ROOT / "hub" / "_layout_probe.py"
    path.write_text(tree)
    try:
        assert foreign_private_uses("hub") == ["hub/_layout_probe.py:2 hub._db"]
    finally:
        path.unlink()


def test_hub_top_level_is_the_contract():
    modules = sorted(p.name for p in (ROOT / "hub").glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= 12, modules
    packages = sorted(p.name for p in (ROOT / "hub").iterdir() if (p / "__init__.py").exists())
    assert {"engine", "store", "documents", "web", "kit"} <= set(packages), packages


def test_plugins_import_only_the_facade():
    deeper = []
    for path in _python_files(*PLUGINS):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hub."):
                deeper.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Import):
                deeper += [f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}" for a in node.names
                           if a.name.startswith("hub.")]
    assert deeper == []


def test_every_facade_name_resolves():
    for name in hub.__all__:
        assert getattr(hub, name) is not None, name
