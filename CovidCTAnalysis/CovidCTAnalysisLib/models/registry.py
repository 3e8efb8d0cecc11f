"""The installed models: ``<root>/<id>/<version>/{metadata.json, model.safetensors}``.

``root`` is ``--models-dir``, else ``$COVIDCT_MODELS_DIR``, else ``~/.cache/covidct/models``: one folder,
the same for ``covidct``, the Slicer panel and ``make demo`` (which installs there), so what one installs the
others find. A "no model" message names the folder searched and why that one.
The sha256 of the weights is checked when a model is installed and again on every
load; a mismatch is refused. ``resolve`` never swaps one model for another behind
the caller's back: it returns exactly the model asked for, or — when none is named —
the one rule below picks, and the caller reports which.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from CovidCTAnalysisLib.errors import ModelError
from CovidCTAnalysisLib.files import atomic_dir
from CovidCTAnalysisLib.models.metadata import METADATA_FILE, WEIGHTS_FILE, ModelMetadata, read_metadata

# Listing and resolving models reads metadata.json only; torch (through models.folder) is imported when a
# model is checked, installed or loaded. So the Slicer panel can list the installed models before the
# first Analyze has installed torch.
if TYPE_CHECKING:
    import torch

    from CovidCTAnalysisLib.models.folder import LoadedModel, save_model_folder

__all__ = ["LoadedModel", "ModelRegistry", "default_models_dir", "save_model_folder", "how_to_get_models"]


def __getattr__(name: str):
    """The re-exports from ``models.folder``, imported on first use (they need torch)."""
    if name in ("LoadedModel", "save_model_folder"):
        from CovidCTAnalysisLib.models import folder as model_folder

        return getattr(model_folder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

ENV_VAR = "COVIDCT_MODELS_DIR"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


HOME_MODELS_DIR = Path("~") / ".cache" / "covidct" / "models"


def default_models_dir() -> Path:
    """``$COVIDCT_MODELS_DIR`` or ``~/.cache/covidct/models``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else HOME_MODELS_DIR.expanduser()


def models_dir_origin(root: Path | str | None = None) -> str:
    """Why the registry is where it is: the words a message puts after the folder."""
    if root is not None:
        return "given with --models-dir"
    if os.environ.get(ENV_VAR):
        return f"from ${ENV_VAR}"
    return f"the default; neither --models-dir nor ${ENV_VAR} is set"


def how_to_get_models(task: str, root: Path, lead: str | None = None, origin: str | None = None) -> str:
    """The message for 'no model': ``lead`` (default: none installed), the folder searched and how to fill it."""
    lead = lead or f"no {task} model is installed"
    origin = origin or models_dir_origin(None if Path(root) == default_models_dir() else root)
    # The sentence "Get one with `make demo` ... `covidct models install PATH`." is swapped for the panel's own
    # actions by CovidCTAnalysisSlicer.models.panelModelMessage: keep its first and last words.
    return (f"{lead}. Searched {root} ({origin}). Get one with `make demo` in a CovidCTAnalysis checkout (DEMO "
            f"models trained on synthetic phantoms, not for real scans; it installs them into {default_models_dir()}) "
            f"or with `covidct models install PATH`. A model folder holds metadata.json + model.safetensors; "
            f"--models-dir or ${ENV_VAR} point at another models folder; `covidct models list` shows what is installed.")


def version_key(version: str) -> tuple:
    """Sort key for versions like ``1.10.0`` > ``1.9.2``; pre-release tails sort before the release."""
    main, _, tail = str(version).partition("-")
    parts = tuple((0, int(p), "") if p.isdigit() else (-1, 0, p) for p in main.split("."))
    return parts + ((1,) if not tail else (0, tail))


class ModelRegistry:
    """Installed models under ``root`` (see module docstring)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_models_dir()
        self.origin = models_dir_origin(root)  # for messages: why this folder

    # --- reading -------------------------------------------------------------------------------------------
    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent for p in self.root.glob(f"*/*/{METADATA_FILE}") if not p.parent.name.startswith("."))

    def folder(self, meta: ModelMetadata) -> Path:
        """Where ``meta`` is (or would be) installed."""
        for name in (meta.id, meta.version):
            if not _SAFE_NAME.match(name):
                raise ModelError(f"model id/version {name!r} cannot be a folder name; expected letters, digits, ._+-")
        return self.root / meta.id / meta.version

    def list(self) -> list[ModelMetadata]:
        """Installed models with readable metadata, by task, id and version (broken ones: ``problems``)."""
        out = []
        for folder in self._folders():
            try:
                out.append(read_metadata(folder))
            except ModelError:
                continue
        return sorted(out, key=lambda m: (m.task, m.id, version_key(m.version)))

    def problems(self) -> list[tuple[Path, str]]:
        """Folders under ``root`` whose metadata cannot be read, with the reason."""
        out = []
        for folder in self._folders():
            try:
                read_metadata(folder)
            except ModelError as e:
                out.append((folder, str(e)))
        return out

    def verify(self) -> list[tuple[ModelMetadata, bool, str]]:
        """Check every installed model (metadata, weights, sha256): ``(metadata, ok, message)``."""
        from CovidCTAnalysisLib.models.folder import check_model_folder

        results = []
        for meta in self.list():
            folder = self.folder(meta)
            try:
                check_model_folder(folder)
                results.append((meta, True, f"ok: sha256 {meta.sha256[:12]}… matches {folder / WEIGHTS_FILE}"))
            except ModelError as e:
                results.append((meta, False, str(e)))
        return results

    def resolve(self, task: str, spec: str | None = None) -> ModelMetadata:
        """The installed model for ``task``.

        ``spec`` ``"id"`` (its highest version) or ``"id@version"``. Without a spec: the only
        model of that task; if there are several, the highest version among the non-demo models
        (ties broken by id), and only if there is none of those, the highest demo model. Callers
        must report the result (``ModelMetadata.label_line``). Raises ``ModelError`` saying how to
        get models when none fits.
        """
        models = [m for m in self.list() if m.task == task]
        if spec:
            mid, _, ver = spec.partition("@")
            same_id = [m for m in self.list() if m.id == mid]
            if not same_id:
                have = ", ".join(f"{m.id}@{m.version}" for m in models) or "none"
                raise ModelError(how_to_get_models(
                    task, self.root, f"model {spec!r} is not installed (installed {task} models: {have})", self.origin))
            wrong = [m for m in same_id if m.task != task]
            if wrong and len(wrong) == len(same_id):
                raise ModelError(f"model {spec!r} is a {wrong[0].task} model; expected a {task} model")
            cands = [m for m in same_id if m.task == task and (not ver or m.version == ver)]
            if not cands:
                have = ", ".join(m.version for m in same_id)
                raise ModelError(f"model {mid} version {ver!r} is not installed in {self.root}; installed "
                                 f"versions: {have}. Use id@version with one of them.")
            return max(cands, key=lambda m: version_key(m.version))
        if not models:
            broken = self.problems()
            lead = None
            if broken:
                lead = (f"no usable {task} model is installed ({len(broken)} folder(s) there cannot be "
                        f"read, e.g. {broken[0][0]}: {broken[0][1]}; `covidct models verify` lists them)")
            raise ModelError(how_to_get_models(task, self.root, lead, self.origin))
        real = [m for m in models if not m.demo]
        pool = real or models
        return max(pool, key=lambda m: (version_key(m.version), m.id))

    def load(self, meta_or_spec: ModelMetadata | str | None, task: str | None = None,
             device: str | torch.device = "cpu") -> LoadedModel:
        """Verify the sha256 (every time) and load an installed model onto ``device``.

        ``meta_or_spec`` is a ``ModelMetadata`` from this registry, or a spec / None for ``resolve``
        (then ``task`` is required).
        """
        if isinstance(meta_or_spec, ModelMetadata):
            meta = meta_or_spec
            if task is not None and meta.task != task:
                raise ModelError(f"model {meta.id}@{meta.version} is a {meta.task} model; expected {task}")
        else:
            if task is None:
                raise ModelError("ModelRegistry.load needs task= when given a spec string or None")
            meta = self.resolve(task, meta_or_spec)
        folder = self.folder(meta)
        if not (folder / METADATA_FILE).is_file():
            raise ModelError(how_to_get_models(meta.task, self.root, f"model {meta.id}@{meta.version} is not installed",
                                               self.origin))
        from CovidCTAnalysisLib.models.folder import load_model_folder

        loaded = load_model_folder(folder, device=device)
        if loaded.metadata.sha256 != meta.sha256:
            raise ModelError(f"installed {meta.id}@{meta.version} has sha256 {loaded.metadata.sha256}, not the "
                             f"{meta.sha256} that was asked for; refusing to swap models.")
        return loaded

    # --- writing -------------------------------------------------------------------------------------------
    def install(self, path: Path | str, force: bool = False) -> ModelMetadata:
        """Copy the model folder ``path`` to ``root/<id>/<version>/`` after checking it (sha256 first).

        An installed id@version with different weights is refused unless ``force``; the same
        weights again is a no-op. The copy is verified before it is renamed into place.
        """
        from CovidCTAnalysisLib.models.folder import check_model_folder

        src = Path(path).expanduser()
        if not src.is_dir():
            raise ModelError(f"{src} is not a folder; expected a model folder with {METADATA_FILE} and {WEIGHTS_FILE}")
        meta = check_model_folder(src)
        dst = self.folder(meta)
        if (dst / METADATA_FILE).is_file():
            try:
                current = read_metadata(dst)
            except ModelError:
                current = None
            if current is not None and current.sha256 == meta.sha256 and not force:
                check_model_folder(dst)  # same model already there: make sure it is intact
                return current
            if not force:
                raise ModelError(f"{meta.id}@{meta.version} is already installed in {dst} with different weights "
                                 f"(sha256 {current.sha256 if current else 'unreadable'}); use --force to replace it, "
                                 "or give the new model another version.")
        with atomic_dir(dst) as tmp:
            for name in (METADATA_FILE, WEIGHTS_FILE):
                shutil.copyfile(src / name, tmp / name)
            check_model_folder(tmp)  # the copy, not just the source, must match
        return meta

    def install_all(self, path: Path | str, force: bool = False) -> list[ModelMetadata]:
        """Install ``path`` if it is a model folder, else every model folder directly inside it."""
        src = Path(path).expanduser()
        if (src / METADATA_FILE).is_file() or not src.is_dir():
            return [self.install(src, force=force)]
        subs = sorted(p.parent for p in src.glob(f"*/{METADATA_FILE}"))
        if not subs:
            raise ModelError(f"{src} holds no model folder ({METADATA_FILE} + {WEIGHTS_FILE}) nor is one")
        return [self.install(s, force=force) for s in subs]
