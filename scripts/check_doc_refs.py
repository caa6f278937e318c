"""Check that the references in docstrings resolve: every dotted name under ``facepose``, ``tasks`` or
``flows`` (``facepose.x.y``, :func:`...`, :class:`~...`) is imported and looked up with getattr, and
every ``docs/<file>.md`` mentioned in code exists. Prints the stale ones; exit status 1 when any.

    PYTHONPATH=$PWD .venv/bin/python scripts/check_doc_refs.py [paths...]
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("facepose", "tasks", "flows")
ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`~?([A-Za-z_][\w.]*)`")
DOTTED = re.compile(r"(?<![\w./-])((?:facepose|tasks|flows)(?:\.[A-Za-z_]\w*)+)")
DOC_PATH = re.compile(r"\bdocs/[\w-]+(?:/[\w-]+)*\.md")


# Parquet schema metadata keys (``facepose.fps``), not Python names.
METADATA_KEYS = {"facepose.layout", "facepose.fps", "facepose.width", "facepose.height", "facepose.version",
                 "facepose.features", "facepose.sample_rate", "facepose.n_mels"}


@lru_cache(maxsize=None)
def definitions() -> dict[str, list[str]]:
    """Top-level names defined in the project's modules (and ``self.x`` attributes) -> those modules."""
    out: dict[str, list[str]] = {}
    for path in python_files():
        mod = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [node.name]
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self":
                names = [node.attr]
            for n in names:
                out.setdefault(n, []).append(mod)
    return out


def _lookup(obj: object, parts: list[str]) -> bool:
    for p in parts:
        if not hasattr(obj, p):
            return False
        obj = getattr(obj, p)
    return True


def resolve(name: str, context: Optional[str] = None) -> bool:
    """Whether ``name`` names a module or an attribute that exists. A name without a package prefix
    (``:func:`fit```) is looked up in the module ``context``, then, as Sphinx cross-references are, among the
    project's definitions (a class or function defined elsewhere, a method, an attribute set in ``__init__``)."""
    parts = name.split(".")
    if name in METADATA_KEYS:
        return True
    if parts[0] not in PACKAGES:
        if context is None:
            return False
        if _lookup(importlib.import_module(context), parts):
            return True
        return any(_lookup(importlib.import_module(m), parts) or len(parts) == 1 for m in definitions().get(parts[0], []))
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and ".".join(parts[:i]).startswith(e.name):
                continue
            raise
        for p in parts[i:]:
            if not hasattr(obj, p):
                return False
            obj = getattr(obj, p)
        return True
    return False


def docstring_refs(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line, name, relative) for every reference in the docstrings of a Python file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node, clean=False)
        if not doc:
            continue
        line = node.body[0].lineno
        for m in ROLE.finditer(doc):
            name = m.group(1).rstrip(".")
            yield line, name, name.split(".")[0] not in PACKAGES
        for m in DOTTED.finditer(doc):
            name = m.group(1).rstrip(".")
            if name.endswith((".py", ".yaml")):
                continue
            yield line, name, False


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stale_docstring_refs(files: list[Path]) -> list[str]:
    out = []
    for path in files:
        mod = module_name(path)
        for line, name, relative in sorted(set(docstring_refs(path))):
            if not resolve(name, mod if relative else None):
                out.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    return out


def python_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def missing_doc_paths() -> list[str]:
    """``docs/...md`` paths named in code, config and docs that do not exist."""
    out = []
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
        files += [Path(folder, f) for f in names if f.endswith((".py", ".yaml", ".toml", ".md"))]
    for path in sorted(files):
        for i, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in DOC_PATH.finditer(text):
                target = m.group(0)
                base = ROOT if path.parent.name != "docs" or target.startswith("docs/") else path.parent
                if not (ROOT / target).is_file() and not (base / target).is_file():
                    out.append(f"{path.relative_to(ROOT)}:{i}: {target}")
    return out


if __name__ == "__main__":
    files = [Path(a).resolve() for a in sys.argv[1:]] or python_files()
    problems = stale_docstring_refs(files) + missing_doc_paths()
    print("\n".join(problems) or "every reference resolves")
    sys.exit(1 if problems else 0)
