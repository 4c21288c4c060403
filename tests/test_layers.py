"""The package's layers: every import in k2jobs (inside functions and under TYPE_CHECKING too) goes down only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "k2jobs"

# Top to bottom. A module may import from its own layer's package and from any layer below its own; layers that
# share a rank are siblings and import none of each other.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"stack"},
    {"worker"},
    {"jobs"},
    {"app"},
    {"load"},
    {"kafka", "store", "sources"},
    {"rows"},
    {"plan"},
    {"config", "background"},
    {"errors", "__init__"},
]
RANK = {layer: rank for rank, layers in enumerate(LAYERS) for layer in layers}
# The compiled extension is part of rows/.
EXTENSIONS = {"k2jobs.rows._fastrows": "rows"}


def layer_of(module: str) -> str:
    """k2jobs.kafka.producer -> kafka; k2jobs.cli -> cli; k2jobs -> __init__."""
    parts = module.split(".")
    return EXTENSIONS.get(module) or (parts[1] if len(parts) > 1 else "__init__")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def is_module(name: str, root: Path) -> bool:
    where = root.parent.joinpath(*name.split("."))
    return where.with_suffix(".py").exists() or (where / "__init__.py").exists() or name in EXTENSIONS


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """Every k2jobs module that a file imports, with its line, wherever the import statement is."""
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "k2jobs"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "k2jobs":
                continue
            for alias in node.names:  # `from k2jobs.rows import _fastrows` imports the module k2jobs.rows._fastrows
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if is_module(submodule, root) else base))
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    """Each import that goes up or sideways, as `file:line: importer -> imported`."""
    wrong = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        own = layer_of(importer)
        for line, imported in imported_modules(path, root):
            target = EXTENSIONS.get(imported) or layer_of(imported)
            if target not in RANK:
                wrong.append(f"{path.relative_to(root)}:{line}: {importer} -> {imported} (no layer declared)")
            elif target != own and RANK[target] <= RANK[own]:
                wrong.append(f"{path.relative_to(root)}:{line}: {importer} -> {imported}")
    return wrong


def test_every_folder_is_a_declared_layer_with_a_docstring() -> None:
    for item in PACKAGE.iterdir():
        if item.is_dir() and (item / "__init__.py").exists():
            assert item.name in RANK, f"{item.name}/ is not in LAYERS"
            assert ast.get_docstring(ast.parse((item / "__init__.py").read_text())), f"{item.name}/ says what it owns"
        elif item.suffix == ".py":
            assert item.stem in RANK, f"{item.name} is not in LAYERS"


def test_imports_go_down_only() -> None:
    assert violations() == []


def test_only_the_cli_imports_the_local_stack() -> None:
    users = set()
    for path in PACKAGE.rglob("*.py"):
        importer = module_name(path)
        if layer_of(importer) == "stack":
            continue
        users |= {importer for _, imported in imported_modules(path) if layer_of(imported) == "stack"}
    assert users <= {"k2jobs.cli"}


@pytest.mark.parametrize(
    ("where", "statement"),
    [
        ("plan/model.py", "from k2jobs.sources.gz import GZIP"),  # up, at module level
        ("rows/batches.py", "    from k2jobs.kafka.producer import ChunkTransaction"),  # up, under TYPE_CHECKING
        ("kafka/markers.py", "def f():\n    from k2jobs.store.ledger import Ledger"),  # sideways, in a function
        ("app.py", "from k2jobs.jobs import lifecycle"),  # the app importing what imports it
        ("jobs/submit.py", "from k2jobs.stack.processes import Meanwhile"),  # production code into the stack
        ("plan/extents.py", "from .model import ChunkPlan\nfrom ..sources.layout import InsideRoot"),  # relative
    ],
)
def test_an_added_upward_import_is_caught(tmp_path: Path, where: str, statement: str) -> None:
    import shutil

    copy = tmp_path / "k2jobs"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.c"))
    target = copy / where
    text = target.read_text()
    if statement.startswith("    "):
        statement = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n" + statement
    target.write_text(text + "\n" + statement + "\n")
    found = violations(copy)
    assert found and all(where in f for f in found), found
