"""The core's house rules: wings, one-way imports, small files, and a module folder Slicer can use as it is.

The core (``CovidCTAnalysisLib``) is grouped into wings. Imports run one way, from faces down to basics:

    faces (``pipeline``, ``cli``) -> steps (``inference``, ``results``)
        -> foundations (``loading``, ``threshold``, ``models``, ``phantom``) -> basics (``constants``, ``errors``, ``progress``)

A wing may import its own modules and anything of a lower rank, or a sibling of the same rank as long as the
wings' graph has no loop. A new wing must be given a rank here, which is the point: say where it stands.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "CovidCTAnalysis"
LIB = MODULE / "CovidCTAnalysisLib"
MAX_LINES = 400

RANK = {
    "__init__": 0, "constants": 0, "errors": 0, "files": 0, "geometry": 0, "masks": 0, "progress": 0,
    "loading": 1, "threshold": 1, "models": 1, "phantom": 1,
    "inference": 2, "results": 2, "interactive": 2,
    "pipeline": 3, "cli": 3, "cohort": 3,
}


def wing_of(module: str) -> str:
    """'CovidCTAnalysisLib.loading.volume' -> 'loading'; 'CovidCTAnalysisLib' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def core_imports(path: Path) -> set[str]:
    """Every CovidCTAnalysisLib module this file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (ruff bans them; use CovidCTAnalysisLib.<wing>...)"
            if node.module and node.module.split(".")[0] == "CovidCTAnalysisLib":
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "CovidCTAnalysisLib")
    return out


def core_files() -> list[Path]:
    return sorted(LIB.rglob("*.py"))


def module_of(path: Path) -> str:
    rel = path.relative_to(MODULE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def test_every_wing_has_a_rank_and_the_root_holds_only_basics_and_faces():
    wings = {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    roots = {p.stem for p in LIB.glob("*.py")}
    unranked = sorted((wings | roots) - set(RANK))
    assert not unranked, f"give {unranked} a rank in Testing/test_layout.py RANK (which layer is it?)"
    assert roots <= {"__init__", "constants", "errors", "files", "geometry", "masks", "progress", "pipeline"}, sorted(roots)
    assert len(wings) >= 7


def test_imports_run_down_the_ranks_and_wings_form_no_loop():
    wing_edges: set[tuple[str, str]] = set()
    upward = []
    for path in core_files():
        here = wing_of(module_of(path))
        for target in core_imports(path):
            there = wing_of(target)
            if there == here:
                continue
            if RANK[there] > RANK[here]:
                upward.append(f"{path.relative_to(LIB)} imports {target} (rank {RANK[there]} > {RANK[here]})")
            wing_edges.add((here, there))
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)
    # no loop between wings (siblings of one rank may use each other one way only)
    graph: dict[str, set[str]] = {}
    for a, b in wing_edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"wing import loop: {' -> '.join(trail + [node, nxt])}"
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [])


def test_no_module_imports_itself_round_through_another():
    graph = {module_of(p): {t for t in core_imports(p)} for p in core_files()}
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            mod = todo.pop()
            assert mod != start, f"import loop through {start}"
            if mod in seen or mod not in graph:
                continue
            seen.add(mod)
            todo.extend(graph[mod])


def test_no_core_file_is_over_the_size_limit():
    big = {str(p.relative_to(LIB)): n for p in core_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"files over {MAX_LINES} lines (split them by job): {big}"


def cmake_listed_scripts() -> list[str]:
    text = (MODULE / "CMakeLists.txt").read_text()
    block = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "CovidCTAnalysis") for line in block.splitlines() if line.strip()]


def test_the_module_folder_as_slicer_installs_it_imports_every_core_module(tmp_path):
    """Slicer installs the files that CMakeLists.txt lists and puts their folder on sys.path; from that copy
    alone every core module must import (a wing missing from the list, or an import that only works from the
    pip install, fails here)."""
    for rel in cmake_listed_scripts():
        dst = tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODULE / rel, dst)
    modules = [module_of(p) for p in core_files() if p.name != "__main__.py"]
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        f"for name in {modules!r}:\n"
        "    mod = importlib.import_module(name)\n"
        f"    assert mod.__file__.startswith({str(tmp_path)!r}), (name, mod.__file__)\n"
        "print('imported', len(sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "imported" in run.stdout
