"""The Slicer releases this module supports, what each bundles, and the check made when the module loads.

Supported: Slicer 5.10 and 5.12 (Python 3.12). Slicer 5.8 ships Python 3.9, which the core does not run
on (``zip(..., strict=True)``, ``X | Y`` annotations) and where pydicom 3 (needed by highdicom) cannot be
installed, so older releases are refused with a message instead of failing at the first Analyze.

``BUNDLED`` records, per supported release, the Python version and the versions of the packages Slicer
itself ships that this module also needs. Source: the Slicer git tag named in ``source`` (files
``CMakeLists.txt`` for ``Slicer_REQUIRED_PYTHON_VERSION``, ``SuperBuild/External_python-dicom-requirements.cmake``
for pydicom/highdicom, ``External_python-numpy.cmake``, ``External_python-scipy.cmake`` and
``External_SimpleITK.cmake`` / ``External_python-SimpleITK.cmake``), read at github.com/Slicer/Slicer.
``Testing/test_slicer_versions.py`` compares these with ``Resources/requirements.txt`` and pyproject.toml.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MINIMUM = (5, 10)


@dataclass(frozen=True)
class SlicerRelease:
    version: str  # the release that was read
    python: str
    bundled: dict[str, str]  # distribution -> version shipped with Slicer
    source: str
    # Packages our requirements.txt upgrades on this release: Slicer has already imported the bundled
    # version, so the first Analyze asks for a restart after installing them.
    upgradedOnFirstAnalyze: tuple[str, ...] = field(default=())


BUNDLED: dict[str, SlicerRelease] = {
    "5.10": SlicerRelease(
        version="5.10.0", python="3.12.10",
        bundled={"pydicom": "2.4.4", "numpy": "2.0.2", "scipy": "1.13.1", "SimpleITK": "2.5.2"},
        source="Slicer git tag v5.10.0",
        upgradedOnFirstAnalyze=("pydicom",),
    ),
    "5.12": SlicerRelease(
        version="5.12.3", python="3.12.10",
        bundled={"pydicom": "3.0.2", "highdicom": "0.27.0", "numpy": "2.4.6", "scipy": "1.17.1",
                 "SimpleITK": "2.5.5"},
        source="Slicer git tag v5.12.3",
    ),
}


def releaseKey(major: int, minor: int) -> str:
    return f"{major}.{minor}"


def versionProblem(major: int, minor: int, python: tuple[int, int] = (3, 12)) -> str | None:
    """None when this Slicer can run the module, else the message shown at module load (names what to do)."""
    newest = max(BUNDLED, key=lambda key: tuple(int(p) for p in key.split(".")))
    if (major, minor) < MINIMUM:
        return (f"CovidCTAnalysis needs 3D Slicer {MINIMUM[0]}.{MINIMUM[1]} or later; this is Slicer {major}.{minor}. "
                f"Install Slicer {newest} (or {MINIMUM[0]}.{MINIMUM[1]}) from download.slicer.org and install the "
                "extension there. The module is not loaded.")
    if python < (3, 10):
        return (f"CovidCTAnalysis needs Python 3.10 or later; this Slicer {major}.{minor} runs Python "
                f"{python[0]}.{python[1]}. Use Slicer {newest}.")
    return None


def isTested(major: int, minor: int) -> bool:
    """True for the releases in ``BUNDLED`` (newer ones load, with a note in the log that they are untested)."""
    return releaseKey(major, minor) in BUNDLED



def runningSlicerProblem(app, python: tuple[int, int] | None = None) -> str | None:
    """``versionProblem`` for the running application (``slicer.app``: majorVersion, minorVersion)."""
    import sys

    return versionProblem(int(app.majorVersion), int(app.minorVersion), python or tuple(sys.version_info[:2]))
