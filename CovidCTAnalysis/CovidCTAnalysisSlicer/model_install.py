"""Install models from the panel: a model folder, a folder of model folders, or a ``.zip`` of either.

The registry does the work (``ModelRegistry.install_all``: the same metadata and sha256 checks as
``covidct models install``), so a tampered model is refused here exactly as on the command line. A zip is
unpacked into a temp folder first; members that would land outside it (``../``, absolute paths) are refused.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path


class ModelArchiveError(ValueError):
    """The zip cannot be unpacked safely or holds no model."""


def _unpackZip(archive: Path, into: Path) -> Path:
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                target = (into / member).resolve()
                if not target.is_relative_to(into.resolve()):
                    raise ModelArchiveError(f"{archive.name} holds the entry {member!r}, which points outside the "
                                            "archive; refusing to unpack it. Re-create the zip from the model folder.")
            zipped.extractall(into)
    except zipfile.BadZipFile as e:
        raise ModelArchiveError(f"{archive} is not a readable zip file ({e}); expected a zip of a model folder") from e
    entries = [p for p in into.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    # A zip of one folder: install that folder (or the model folders in it).
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into


def installModels(path: str | Path, modelsDir: str | Path | None = None, force: bool = False) -> list:
    """Install every model found at ``path`` into the registry at ``modelsDir``; returns their metadata.

    Raises the core's ``ModelError`` (bad metadata, sha256 mismatch, already installed with other weights)
    or ``ModelArchiveError``; nothing is installed from a model that fails its checks.
    """
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    source = Path(path).expanduser()
    registry = ModelRegistry(modelsDir or None)
    if source.is_file() and source.suffix.lower() == ".zip":
        workDir = Path(tempfile.mkdtemp(prefix="CovidCTAnalysis-models-"))
        try:
            return registry.install_all(_unpackZip(source, workDir), force=force)
        finally:
            shutil.rmtree(workDir, ignore_errors=True)
    return registry.install_all(source, force=force)


def modelsFolder(modelsDir: str | Path | None = None, create: bool = False) -> Path:
    """Where the models live; ``create`` for the panel's "Open folder" button (opening the panel creates nothing)."""
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    root = ModelRegistry(modelsDir or None).root
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root
