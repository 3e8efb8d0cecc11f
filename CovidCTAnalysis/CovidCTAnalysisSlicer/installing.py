"""How the first Analyze installs packages without breaking Slicer: torch checks, pip constraints, restart notice.

- torch and torchvision come from the PyTorch extension (``PyTorchUtils``), asked for the range this project is
  tested with; an installed torch outside it, or a missing or mismatched torchvision, is refused with a message
  (the user updates it in the PyTorch Utils module) instead of letting pip replace it.
- pip installs ``Resources/requirements.txt`` with a constraints file pinning the packages Slicer and the PyTorch
  extension provide (torch, torchvision, numpy, SimpleITK) at their installed versions, so a dependency (monai)
  can never pull another torch: pip fails with a conflict instead. Slicer 5.12's ``slicer.packaging.pip_ensure``
  additionally skips them (``skip_packages``) and shows its own question, progress, error and restart dialogs.
- After a plain ``pip_install`` (Slicer 5.10), packages that Slicer had already imported in an older version
  (pydicom 2.4.4 on 5.10) are named, and the user is asked to restart.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Iterable, Mapping

# The range asked of PyTorchUtils: pyproject's lower bounds (torch>=2.2, torchvision>=0.17) up to the next major;
# the test suite runs with torch 2.14.1 / torchvision 0.29.1.
TORCH_REQUIREMENT = ">=2.2,<3"
TORCHVISION_REQUIREMENT = ">=0.17,<1"
# Distributions that Slicer or the PyTorch extension provide; pip must never replace them.
PROVIDED_BY_SLICER = ("torch", "torchvision", "numpy", "SimpleITK")
INSTALL_TORCH_HINT = ("Open the PyTorch Utils module (Utilities), uninstall PyTorch, restart Slicer, then press "
                      "Analyze again: CovidCTAnalysis then installs torch{torch} with a matching torchvision.")


def installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    from packaging.version import Version

    return Version(version).release


def matchingTorchvision(torchVersion: str) -> str:
    """The torchvision minor series built for a torch 2.x release (torch 2.N pairs with torchvision 0.(N+15))."""
    major, minor = _release(torchVersion)[:2]
    if major != 2:
        raise ValueError(f"torch {torchVersion}: only torch 2.x is supported (expected {TORCH_REQUIREMENT})")
    return f"0.{minor + 15}"


def torchProblem(torchVersion: str | None, torchvisionVersion: str | None) -> str | None:
    """None when the installed torch and torchvision can run the core, else what is wrong and what to do."""
    from packaging.specifiers import SpecifierSet

    hint = INSTALL_TORCH_HINT.format(torch=TORCH_REQUIREMENT)
    if torchVersion is None:
        return f"PyTorch is not installed. {hint}"
    if not SpecifierSet(TORCH_REQUIREMENT).contains(torchVersion, prereleases=True):
        return f"the installed torch {torchVersion} is outside the tested range torch{TORCH_REQUIREMENT}. {hint}"
    wanted = matchingTorchvision(torchVersion)
    if torchvisionVersion is None:
        return f"torchvision is not installed (torch {torchVersion} needs torchvision {wanted}.x). {hint}"
    have = ".".join(str(p) for p in _release(torchvisionVersion)[:2])
    if have != wanted:
        return (f"the installed torchvision {torchvisionVersion} does not match torch {torchVersion} (which needs "
                f"torchvision {wanted}.x). {hint}")
    return None


def constraintLines(versionOf: Callable[[str], str | None] = installedVersion) -> list[str]:
    """``name==version`` for each Slicer-provided package that is installed (pip's ``-c`` file)."""
    lines = []
    for name in PROVIDED_BY_SLICER:
        version = versionOf(name)
        if version:
            lines.append(f"{name}=={version}")
    return lines


def importNames(distribution: str) -> set[str]:
    """Top-level import names of an installed distribution (``pydicom`` -> {"pydicom"}; ``pillow`` -> {"PIL"})."""
    names = {distribution.replace("-", "_")}
    for top, distributions in importlib.metadata.packages_distributions().items():
        if any(d.lower().replace("_", "-") == distribution.lower().replace("_", "-") for d in distributions):
            names.add(top)
    return names


def alreadyImported(requirementNames: Iterable[str], modules: Mapping[str, object] | None = None) -> list[str]:
    """Of the distributions about to be installed, those whose modules this process has imported already.

    Their new version is on disk after the install, but the old one stays loaded until Slicer restarts.
    """
    loaded = sys.modules if modules is None else modules
    return [name for name in requirementNames if any(top in loaded for top in importNames(name))]


def findPipEnsure(slicerModule) -> Callable | None:
    """``slicer.packaging.pip_ensure`` (Slicer 5.12; ``slicer.pydeps`` in some 5.11 builds), else None."""
    import importlib

    for name in ("packaging", "pydeps"):
        try:
            module = importlib.import_module(f"{slicerModule.__name__}.{name}")
        except ImportError:
            continue
        function = getattr(module, "pip_ensure", None)
        if callable(function):
            return function
    return None


def ensureTorch(pyTorchUtilsLogic: Callable[[], object] | None) -> None:
    """Install torch/torchvision through PyTorchUtils (tested range) when absent; refuse a wrong installed pair.

    ``pyTorchUtilsLogic`` makes a ``PyTorchUtils.PyTorchUtilsLogic`` (None: the PyTorch extension is missing).
    Raises ``RuntimeError`` with what to do.
    """
    from CovidCTAnalysisSlicer.requirements import isTorchAvailable

    if not isTorchAvailable():
        if pyTorchUtilsLogic is None:
            raise RuntimeError("PyTorch is not installed. Install the PyTorch extension in the Extensions Manager, "
                               "restart Slicer and press Analyze again.")
        torch = pyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT,
                                                 torchvisionVersionRequirement=TORCHVISION_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch was not installed; the analysis needs it.")
    problem = torchProblem(installedVersion("torch"), installedVersion("torchvision"))
    if problem:
        raise RuntimeError(problem)


def installPackages(missing: list[str], slicerModule, constraintsPath: str) -> bool:
    """Install ``missing`` with the Slicer-provided packages pinned; True when Slicer's own installer was used.

    Slicer 5.12's ``pip_ensure`` asks, shows progress and errors, and offers the restart itself (and skips
    the provided packages); otherwise ``slicer.util.pip_install`` runs with ``-c constraintsPath``.
    """
    with open(constraintsPath, "w", encoding="utf-8") as f:
        f.write("\n".join(constraintLines()) + "\n")
    pipEnsure = findPipEnsure(slicerModule)
    if pipEnsure is not None:
        pipEnsure(missing, constraints=constraintsPath, skip_packages=list(PROVIDED_BY_SLICER),
                  requester="CovidCTAnalysis")
        return True
    slicerModule.util.pip_install(missing + ["-c", constraintsPath])
    return False
