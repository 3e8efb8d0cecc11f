"""The built wheel, installed into a fresh venv without any extra, runs ``covidct analyze --method threshold``.

Why not a wholly fresh venv: the pinned torch/torchvision are CUDA builds of about 5.5 GB; a fresh
``pip install torch==2.14.1 torchvision==0.29.1`` plus the wheel took 4 min 12 s on the 2-core dev machine
(measured once, with no pip cache) and 6 GB of disk per run. So the venv borrows torch, torchvision and
their own dependency closure from the test's interpreter through a ``.pth`` file pointing at a folder of
links to just those distributions. Everything else is installed by pip from the wheel's own metadata: every
package the core imports and that the wheel declares (numpy, scipy, SimpleITK, monai, matplotlib, ...) is
installed fresh, even when torch's closure also needs it (numpy). The trade-off: a core import of a package
that only torch's closure brings (sympy, jinja2, fsspec, ...) and the wheel does not declare would not be
caught here; ``test_runtime_imports_are_declared`` below catches that case from the source.

Measured on the shared 2-core dev machine while others ran tests (``pytest -s`` prints the phases): 411 s in all;
wheel 18 s, venv + links 28 s, ``pip install`` of the wheel and its dependencies from the index 243 s, phantom
28 s, analysis 48 s.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "CovidCTAnalysis" / "CovidCTAnalysisLib"
BORROWED = ("torch", "torchvision")  # too large to install per test run (module doc)
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"SimpleITK": "simpleitk", "PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _runtime_requirements() -> list[Requirement]:
    return [Requirement(r) for r in _project()["dependencies"]]


def _optional_feature_requirements() -> set[str]:
    """Distributions of the core's optional features (extras other than ``train``, which is for training/,
    and ``dev``), with the extras they name expanded (``dask[distributed]`` brings ``distributed``)."""
    names = set()
    for extra, reqs in _project()["optional-dependencies"].items():
        if extra in ("train", "dev"):
            continue
        for req in map(Requirement, reqs):
            names.add(canonicalize_name(req.name))
            names |= {canonicalize_name(e) for e in req.extras}
    return names


def _core_third_party_imports() -> set[str]:
    names = set()
    for path in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("CovidCTAnalysisLib", "__future__")}


def test_runtime_imports_are_declared():
    """The runtime dependencies are exactly what the core imports (nothing missing, nothing extra); an
    optional feature's imports (``covidct batch`` on Dask) may come from its extra instead."""
    imported = {canonicalize_name(DISTRIBUTION.get(n, n)) for n in _core_third_party_imports()}
    declared = {canonicalize_name(r.name) for r in _runtime_requirements()}
    missing = imported - declared - _optional_feature_requirements()
    assert missing == set(), "the core imports these, neither pyproject's dependencies nor a feature extra has them"
    assert declared - imported == set(), "pyproject declares these, the core never imports them (move to an extra)"
    assert all(not r.extras for r in _runtime_requirements()), "no extras of runtime dependencies (monai[ignite])"


def _closure(names: tuple[str, ...]) -> set[str]:
    """Installed distributions that ``names`` need, themselves included (markers evaluated, no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in md.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _link_borrowed(target: Path, keep_out: set[str]) -> list[str]:
    """Links in ``target`` to the files of the borrowed distributions (and their dist-info), minus ``keep_out``."""
    target.mkdir()
    linked = []
    for name in sorted(_closure(BORROWED) - keep_out):
        dist = md.distribution(name)
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = site / top
            if src.exists() and not (target / top).exists() and top != "__pycache__" and not top.endswith(".pth"):
                (target / top).symlink_to(src)
        linked.append(name)
    return linked


def _run(cmd: list, timeout: int, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert result.returncode == 0, f"{cmd[:3]} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_analyzes_a_phantom(tmp_path):
    import time

    clock, phases = time.monotonic(), {}

    def phase(name: str) -> None:
        nonlocal clock
        phases[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    # 1. Build the wheel from a copy of the sources (a build in the checkout would leave build/ behind).
    src = tmp_path / "src"
    shutil.copytree(LIB, src / "CovidCTAnalysis" / "CovidCTAnalysisLib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src], 600)
    wheel = next((tmp_path / "dist").glob("covidct_analysis-*.whl"))
    phase("build wheel")

    # 2. A fresh venv (no system site-packages) that borrows only torch/torchvision and their closure.
    venv = tmp_path / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv], 300)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], 60).stdout.strip())
    declared = {canonicalize_name(r.name) for r in _runtime_requirements()} - set(BORROWED)
    linked = _link_borrowed(tmp_path / "borrowed", keep_out=declared)
    assert {"torch", "torchvision"} <= set(linked) and "numpy" not in linked
    (site / "borrowed-torch.pth").write_text(str(tmp_path / "borrowed") + "\n")
    phase("venv")

    # 3. pip installs the wheel and whatever it declares, nothing else (no extras).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "COVIDCT_MODELS_DIR")}
    env["COVIDCT_MODELS_DIR"] = str(tmp_path / "no-models")
    _run([py, "-m", "pip", "install", "-q", wheel], 900, env=env)
    phase("pip install wheel")
    probe = ("import importlib.util as u, CovidCTAnalysisLib as c, torch; print(c.__file__); print(torch.__file__); "
             "print(sorted(n for n in ('pytest', 'tensorboard', 'ignite', 'pylibjpeg', 'ruff') if u.find_spec(n)))")
    lib_file, torch_file, dev_only = _run([py, "-c", probe], 120, env=env, cwd=tmp_path).stdout.split("\n")[:3]
    assert Path(lib_file).is_relative_to(venv), lib_file  # the installed wheel, not the checkout
    assert Path(torch_file).is_relative_to(tmp_path / "borrowed"), torch_file
    assert dev_only == "[]", f"dev/train packages leaked into the runtime venv: {dev_only}"

    # 4. The installed console script makes a phantom and analyses it with the threshold method.
    covidct = venv / "bin" / "covidct"
    _run([covidct, "phantom", "--kind", "covid", "--seed", "2", "--output-dir", tmp_path / "ph",
          "--size", "96", "80", "48"], 300, env=env, cwd=tmp_path)
    phase("phantom")
    out = tmp_path / "out"
    result = _run([covidct, "analyze", tmp_path / "ph" / "image.nii.gz", "--method", "threshold",
                   "--output-dir", out, "--device", "cpu"], 600, env=env, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert {"report.json", "labelmap.nii.gz", "segmentation.seg.nrrd", "preview.png"} <= {p.name for p in out.iterdir()}
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r'"method":\s*"threshold"', (out / "report.json").read_text())
    phase("analyze")
    print(f"fresh-venv wheel check, seconds per phase: {phases}")  # for the record (pytest -s), not asserted
    shutil.rmtree(venv)  # ~0.5 GB
