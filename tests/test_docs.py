"""The design documents in docs/ stay true to the code: every ``docs/...md`` path (and quoted section)
named in code, config or docs exists, every dotted ``facepose.*`` / ``tasks.*`` / ``flows.*`` name in
docs/*.md resolves, and the links between the documents land on a file and heading that exist."""

from __future__ import annotations

import ast
import importlib
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))
# a path under docs/, optionally followed by a quoted section: (docs/contracts.md, "Curated dataset")
DOC_REF = re.compile(r'\bdocs/([\w-]+(?:/[\w-]+)*\.md)(?:, \\?"([^"\\]+)\\?")?')
DOTTED = re.compile(r"(?<![\w./-])((?:facepose|tasks|flows)(?:\.[A-Za-z_]\w*)+)")
LINK = re.compile(r"\]\(([\w./-]*\.md)?(?:#([\w-]+))?\)")
# Parquet schema metadata keys, not Python names
METADATA_KEYS = {"facepose.layout", "facepose.fps", "facepose.width", "facepose.height", "facepose.version",
                 "facepose.features", "facepose.sample_rate", "facepose.n_mels"}


def headings(path: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def source_files() -> list[Path]:
    """The checkout's code, config and docs (hidden folders such as .venv and .git left out)."""
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
        out += [Path(folder, f) for f in files if f.endswith((".py", ".yaml", ".toml", ".md"))]
    return sorted(out)


def doc_references() -> list[tuple[str, str, str]]:
    """(where, docs file, section or '') for every docs/ reference outside docs/ itself."""
    refs = []
    for path in source_files():
        if path.parent == DOCS:
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            refs += [(f"{path.relative_to(ROOT)}:{i}", m.group(1), m.group(2) or "") for m in DOC_REF.finditer(line)]
    return refs


def resolves(name: str) -> bool:
    """facepose.*: import the longest module prefix, then getattr the rest. tasks.* / flows.*: the module
    file exists and defines the name at top level (without importing Prefect and Ray)."""
    parts = name.split(".")
    if parts[0] != "facepose":
        for i in range(len(parts), 0, -1):
            path = ROOT.joinpath(*parts[:i])
            for file in (path.with_suffix(".py"), path / "__init__.py"):
                if file.is_file():
                    rest = parts[i:]
                    if not rest:
                        return True
                    tree = ast.parse(file.read_text())
                    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
                    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
                    return len(rest) == 1 and rest[0] in defined
        return False
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue
            raise
        for p in parts[i:]:
            if not hasattr(obj, p):
                return False
            obj = getattr(obj, p)
        return True
    return False


def test_the_design_documents_exist_and_the_index_lists_each():
    names = {p.name for p in DOC_FILES}
    assert {"README.md", "design.md", "contracts.md", "batch.md", "model.md", "environment.md"} <= names
    index = (DOCS / "README.md").read_text()
    assert all(f"({n})" in index for n in names - {"README.md"}), "docs/README.md must link every document"


def test_every_docs_path_named_in_the_code_exists_with_its_section():
    refs = doc_references()
    assert len(refs) >= 20  # the docstrings and comments that point here (a broken regex finds none)
    missing = [f"{where}: docs/{name}" for where, name, _ in refs if not (DOCS / name).is_file()]
    assert not missing, "docs/ paths that do not exist:\n" + "\n".join(missing)
    bad = [f"{where}: docs/{name}, {section!r}" for where, name, section in refs
           if section and section not in headings(DOCS / name)]
    assert not bad, "sections that are not headings of their document:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_every_dotted_name_in_the_docs_resolves(doc):
    names = sorted({m.group(1).rstrip(".") for m in DOTTED.finditer(doc.read_text())} - METADATA_KEYS)
    stale = [n for n in names if not resolves(n)]
    assert not stale, f"{doc.name} names things that do not exist: {stale}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_links_between_the_docs_land_on_a_file_and_heading(doc):
    broken = []
    for m in LINK.finditer(doc.read_text()):
        target = (doc.parent / m.group(1)).resolve() if m.group(1) else doc
        if not target.is_file():
            broken.append(m.group(0))
        elif m.group(2) and m.group(2) not in {slug(h) for h in headings(target)}:
            broken.append(m.group(0))
    assert not broken, f"{doc.name}: broken links {broken}"


def test_the_resolver_tells_a_stale_name_from_a_real_one():
    assert resolves("facepose.batch.plan.needs_run") and resolves("tasks.shard.batch_flow_body")
    assert not resolves("facepose.render.warp_mesh.MeshWarp.backward_map")
    assert not resolves("facepose.no_such_module.x") and not resolves("tasks.shard.no_such_function")


def test_every_dotted_name_in_the_config_files_resolves():
    """The YAML headers name the dataclass each file merges onto; a renamed class must not leave them behind."""
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert files
    stale = [f"{f.relative_to(ROOT)}: {n}" for f in files
             for n in sorted({m.group(1).rstrip(".") for m in DOTTED.finditer(f.read_text())}) if not resolves(n)]
    assert not stale, "config files name things that do not exist:\n" + "\n".join(stale)
