"""Which of the module's Python requirements are missing, read from ``Resources/requirements.txt``.

Nothing is installed here: the Widget asks the user first and then calls
``slicer.util.pip_install`` with the pinned lines this returns. torch is not in
the file; it comes from Slicer's PyTorch extension. Version ranges are checked
with ``packaging`` (shipped with Slicer's Python, as pip needs it).
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path


def readRequirements(path: str | Path) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def parseRequirement(line: str):
    """A ``packaging`` Requirement; ``ValueError`` naming the line when it is not a valid specifier."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return Requirement(line)
    except InvalidRequirement as e:
        raise ValueError(f"requirement {line!r} is not a valid pip requirement ({e})") from e


def isSatisfied(line: str) -> bool:
    """True when the distribution is installed in a version inside the line's range."""
    try:
        requirement = parseRequirement(line)
    except ImportError:  # no ``packaging``: fall back to "is it installed at all"
        name = re.split(r"[\s\[<>=!~;]", line.strip(), maxsplit=1)[0]
        return _installedVersion(name) is not None
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True  # not needed on this platform
    installed = _installedVersion(requirement.name)
    return installed is not None and requirement.specifier.contains(installed, prereleases=True)


def _installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def isTorchAvailable() -> bool:
    """True when torch can be imported (it comes from the PyTorch extension, never from this file)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def missingRequirements(path: str | Path) -> list[str]:
    """The requirement lines of ``path`` that are not installed in a satisfying version."""
    return [line for line in readRequirements(path) if not isSatisfied(line)]


def requirementNames(lines: list[str]) -> list[str]:
    """The distribution names of requirement lines (``pydicom>=3.0,<4`` -> ``pydicom``)."""
    return [re.split(r"[\s\[<>=!~;]", line.strip(), maxsplit=1)[0] for line in lines]
