"""Which Slicer the module runs in, what it installs there, and how (issue 15); no MRML needed.

- the version check at module load (fake version numbers);
- the pins of Resources/requirements.txt against what each supported Slicer bundles (slicer_versions.BUNDLED,
  read from Slicer's own SuperBuild files at the recorded tags), and against pyproject's runtime dependencies;
- the torch range asked of PyTorchUtils and the torch/torchvision checks; the pip constraints; the restart notice;
- the ExtensionsIndex description against CMakeLists.txt;
- the MRML tests fail under CI=true when slicer-core is missing, and skip otherwise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "CovidCTAnalysis"
sys.path.insert(0, str(MODULE))

from CovidCTAnalysisSlicer import installing, slicer_versions  # noqa: E402
from CovidCTAnalysisSlicer.requirements import readRequirements  # noqa: E402

REQUIREMENTS = MODULE / "Resources" / "requirements.txt"
FROM_PYTORCH_EXTENSION = {"torch", "torchvision"}


def requirementsTxt() -> dict[str, Requirement]:
    return {Requirement(line).name.lower(): Requirement(line) for line in readRequirements(REQUIREMENTS)}


def pyprojectRuntime() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(line).name.lower(): Requirement(line) for line in project["dependencies"]}


# --- the version check ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("major,minor,python", [(5, 10, (3, 12)), (5, 12, (3, 12)), (5, 14, (3, 13)), (6, 0, (3, 13))])
def test_supported_and_newer_slicers_load(major, minor, python):
    assert slicer_versions.versionProblem(major, minor, python) is None


@pytest.mark.parametrize("major,minor,python", [(5, 8, (3, 9)), (5, 6, (3, 9)), (5, 9, (3, 12)), (4, 11, (3, 6))])
def test_older_slicers_are_refused_with_what_to_install(major, minor, python):
    message = slicer_versions.versionProblem(major, minor, python)
    assert message and f"this is Slicer {major}.{minor}" in message
    assert "5.10 or later" in message and "download.slicer.org" in message


def test_a_python_older_than_the_core_needs_is_refused_even_on_a_new_slicer():
    message = slicer_versions.versionProblem(5, 12, (3, 9))
    assert message and "Python 3.10" in message and "3.9" in message


def test_running_slicer_problem_reads_the_application_version():
    class App:
        majorVersion, minorVersion = 5, 8

    assert "this is Slicer 5.8" in slicer_versions.runningSlicerProblem(App(), (3, 9))
    App.minorVersion = 12
    assert slicer_versions.runningSlicerProblem(App(), (3, 12)) is None


def test_supported_releases_run_a_python_the_core_supports():
    requires = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    for key, release in slicer_versions.BUNDLED.items():
        assert release.python in requires, (key, release.python)
        assert release.version.startswith(key + ".") and key in release.source or release.version in release.source
        assert slicer_versions.versionProblem(*map(int, key.split(".")),
                                              tuple(map(int, release.python.split(".")[:2]))) is None


# --- pins against what each Slicer bundles, and against pyproject -------------------------------------------------


def test_pins_agree_with_what_each_supported_slicer_bundles():
    """A bundled package we also pin must satisfy the pin, or be recorded as upgraded on first Analyze (restart)."""
    pins = requirementsTxt()
    runtime = pyprojectRuntime()
    for key, release in slicer_versions.BUNDLED.items():
        for name, version in release.bundled.items():
            pin = pins.get(name.lower())
            if pin is not None:
                satisfied = pin.specifier.contains(version)
                upgraded = name in release.upgradedOnFirstAnalyze
                assert satisfied != upgraded, (
                    f"Slicer {key} bundles {name} {version}; requirements.txt asks {pin}: "
                    + ("list it in upgradedOnFirstAnalyze (restart)" if not satisfied else "it is not upgraded"))
            else:  # not installed by us: Slicer's own version must do
                assert name.lower() in runtime, f"{name} is in BUNDLED but the core does not need it"
                assert runtime[name.lower()].specifier.contains(version), (
                    f"Slicer {key} bundles {name} {version}, outside pyproject's {runtime[name.lower()]}")


def test_requirements_txt_installs_pyprojects_runtime_dependencies():
    """requirements.txt = pyproject's runtime dependencies, minus torch/torchvision (PyTorch extension) and the
    packages Slicer provides, with the same lower bounds."""
    pins = requirementsTxt()
    runtime = pyprojectRuntime()
    provided = {name.lower() for name in installing.PROVIDED_BY_SLICER} - FROM_PYTORCH_EXTENSION
    expected = set(runtime) - FROM_PYTORCH_EXTENSION - provided
    assert set(pins) == expected, (f"only in requirements.txt: {sorted(set(pins) - expected)}; "
                                   f"only in pyproject: {sorted(expected - set(pins))}")

    def lower(requirement: Requirement) -> str | None:
        return next((s.version for s in requirement.specifier if s.operator == ">="), None)

    for name in expected:
        assert lower(pins[name]) == lower(runtime[name]), (name, str(pins[name]), str(runtime[name]))
        assert pins[name].specifier.contains(lower(runtime[name]))


def test_torch_range_agrees_with_pyproject():
    runtime = pyprojectRuntime()
    for name, wanted in (("torch", installing.TORCH_REQUIREMENT), ("torchvision", installing.TORCHVISION_REQUIREMENT)):
        lowerBound = next(s.version for s in runtime[name].specifier if s.operator == ">=")
        assert f">={lowerBound}" in wanted, (name, wanted, str(runtime[name]))


# --- torch checks, constraints, restart ------------------------------------------------------------------------------


def test_torch_checks():
    assert installing.torchProblem("2.14.1", "0.29.1") is None
    assert installing.torchProblem("2.2.0+cpu", "0.17.2+cpu") is None
    assert "not installed" in installing.torchProblem(None, None)
    assert "outside the tested range" in installing.torchProblem("2.1.2", "0.16.2")
    assert "outside the tested range" in installing.torchProblem("3.0.0", "1.0.0")
    assert "torchvision is not installed" in installing.torchProblem("2.14.1", None)
    mismatch = installing.torchProblem("2.14.1", "0.28.0")
    assert "does not match" in mismatch and "0.29.x" in mismatch and "PyTorch Utils" in mismatch


def test_installed_torch_pair_is_accepted():
    assert installing.torchProblem(installing.installedVersion("torch"), installing.installedVersion("torchvision")) is None


def test_constraints_pin_the_packages_slicer_provides():
    versions = {"torch": "2.14.1", "torchvision": "0.29.1", "numpy": "2.4.6"}
    assert installing.constraintLines(versions.get) == ["torch==2.14.1", "torchvision==0.29.1", "numpy==2.4.6"]


def test_restart_is_asked_for_packages_already_imported():
    import pydicom  # noqa: F401 - Slicer's DICOM plugins have imported it before the first Analyze

    assert installing.alreadyImported(["pydicom", "monai-not-imported"], {"pydicom": object()}) == ["pydicom"]
    assert installing.alreadyImported(["pillow"], {"PIL": object()}) == ["pillow"]
    assert installing.alreadyImported(["highdicom"], {}) == []


def test_pip_ensure_is_found_where_slicer_puts_it(tmp_path, monkeypatch):
    package = tmp_path / "fakeslicer"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fakeslicer

    assert installing.findPipEnsure(fakeslicer) is None  # Slicer 5.10: plain pip_install
    (package / "packaging.py").write_text("def pip_ensure(requirements, **kwargs):\n    return None\n")
    assert installing.findPipEnsure(fakeslicer).__module__ == "fakeslicer.packaging"


# --- ExtensionsIndex ---------------------------------------------------------------------------------------------------


def test_extensions_index_description_agrees_with_cmake():
    entry = json.loads((REPO / "ExtensionsIndex" / "CovidCTAnalysis.json").read_text())
    cmake = (REPO / "CMakeLists.txt").read_text()
    fields = dict(re.findall(r"set\((\w+)\s+\"?(.+?)\"?\)\s*(?:#.*)?$", cmake, re.M))
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-")
    assert entry["build_dependencies"] == fields["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert entry["category"] == fields["EXTENSION_CATEGORY"]
    assert entry["scm_url"] == fields["CovidCTAnalysis_REPOSITORY_URL"]
    assert fields["EXTENSION_HOMEPAGE"].startswith("${CovidCTAnalysis_REPOSITORY_URL}")
    assert (REPO / entry["build_subdirectory"] / "CMakeLists.txt").is_file()
    assert set(entry) <= {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                          "build_subdirectory", "enabled", "tier"}


# --- MRML tests skip locally, fail in CI, when slicer-core is missing --------------------------------------------------


@pytest.mark.parametrize("ci,expected", [("true", "1 error"), ("false", "1 skipped")])
def test_mrml_tests_fail_in_ci_when_slicer_core_is_missing(ci, expected):
    code = ("import sys, pytest\nsys.modules['slicer'] = None\n"
            "raise SystemExit(pytest.main(['-q', '-p', 'no:cacheprovider', 'test_slicer_glue.py']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=str(REPO / "Testing"), env={**os.environ, "CI": ci})
    assert expected in result.stdout, result.stdout[-2000:]
    assert result.returncode == (2 if ci == "true" else 5)  # 2: collection error; 5: nothing ran (skipped)


def test_training_requirements_are_pyprojects_train_extra():
    """requirements-train.txt ("Train the demo models here") = pyproject's `train` extra, same lower bounds."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    wanted = {Requirement(line).name.lower(): Requirement(line) for line in extra}
    pins = {Requirement(line).name.lower(): Requirement(line)
            for line in readRequirements(MODULE / "Resources" / "requirements-train.txt")}
    assert set(pins) == set(wanted)
    for name, requirement in wanted.items():
        lowerBound = next(s.version for s in requirement.specifier if s.operator == ">=")
        assert f">={lowerBound}" in str(pins[name].specifier), (name, str(pins[name]), str(requirement))


def _python39() -> str | None:
    """A Python 3.9 (Slicer 5.8's), if this machine has one (pyenv keeps 3.9.18 here)."""
    import shutil

    for candidate in (shutil.which("python3.9"), os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python3.9")):
        if candidate and Path(candidate).exists():
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                   text=True, env={**os.environ, "PYENV_VERSION": "3.9.18"})
            if probe.returncode == 0 and "(3, 9)" in probe.stdout:
                return candidate
    return None


def test_on_slicer_58s_python_the_module_compiles_and_refuses_politely(tmp_path):
    """Slicer 5.8 runs Python 3.9: the module file and its glue must at least compile there, and the version
    check must run and say what to install (a SyntaxError would give the user a traceback instead)."""
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 on this machine (Slicer 5.8's Python); the refusal is checked on 3.11 above")
    module = Path(__file__).resolve().parents[1] / "CovidCTAnalysis"
    env = {**os.environ, "PYENV_VERSION": "3.9.18", "PYTHONPYCACHEPREFIX": str(tmp_path)}
    files = [str(module / "CovidCTAnalysis.py"), *map(str, sorted((module / "CovidCTAnalysisSlicer").glob("*.py")))]
    compiled = subprocess.run([python, "-m", "py_compile", *files], capture_output=True, text=True, env=env)
    assert compiled.returncode == 0, compiled.stderr
    code = ("from CovidCTAnalysisSlicer import slicer_versions as s\n"
            "class App: majorVersion = 5; minorVersion = 8; applicationVersion = '5.8.1'\n"
            "print(s.runningSlicerProblem(App()))\n")
    run = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=module)
    assert run.returncode == 0, run.stderr
    assert "5.10 or later" in run.stdout and "Slicer 5.8" in run.stdout
