"""``OUT/batch.json``: what a cohort was run with, and the refusal to mix two different runs in one folder.

It holds the analysis settings, the package version and the models (id, version, sha256, demo). A rerun
into the same folder compares these with its own; any difference is refused (``--overwrite`` starts the
cohort again) so that one summary never mixes models or settings. Run-time choices (workers, scheduler,
timeout, parts) do not change results and are not compared.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from CovidCTAnalysisLib import INTENDED_USE, __version__
from CovidCTAnalysisLib.errors import ModelError, OutputError
from CovidCTAnalysisLib.files import write_json

BATCH_JSON = "batch.json"
SCHEMA = "1.0"
DEFAULT_ANALYZER = "CovidCTAnalysisLib.pipeline:analyze"


@dataclass(frozen=True)
class AnalysisSettings:
    """What every scan is analysed with (the arguments of ``pipeline.analyze`` that a cohort shares)."""

    method: str = "model"
    segment: str = "auto"
    device: str = "auto"
    classifier: str | None = None
    segmenter: str | None = None
    models_dir: str | None = None
    dicom_seg: str = "auto"
    analyzer: str = DEFAULT_ANALYZER  # MODULE:FUNCTION called like pipeline.analyze (tests use stand-ins)

    def analyze_kwargs(self) -> dict[str, Any]:
        return {"method": self.method, "segment": self.segment, "device": self.device,
                "classifier": self.classifier, "segmenter": self.segmenter, "models_dir": self.models_dir,
                "dicom_seg": self.dicom_seg}


def resolve_models(settings: AnalysisSettings) -> list[dict[str, Any]]:
    """The models this cohort will use (provenance dicts), resolved once by the driver; [] for threshold."""
    if settings.method != "model":
        return []
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    registry = ModelRegistry(settings.models_dir)
    metas = [registry.resolve("classification", settings.classifier)]
    if settings.segment != "never":
        metas.append(registry.resolve("segmentation", settings.segmenter))
    return [m.provenance() for m in metas]


def pin_models(settings: AnalysisSettings, models: list[dict[str, Any]]) -> AnalysisSettings:
    """Settings naming the resolved models exactly (id@version), so workers cannot pick another one."""
    if not models:
        return settings
    by_task = {m["task"]: f"{m['id']}@{m['version']}" for m in models}
    return AnalysisSettings(**{**asdict(settings), "classifier": by_task.get("classification", settings.classifier),
                               "segmenter": by_task.get("segmentation", settings.segmenter)})


def batch_document(settings: AnalysisSettings, models: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema_version": SCHEMA, "software": {"name": "CovidCTAnalysis", "version": __version__},
            "intended_use": INTENDED_USE, "settings": asdict(settings),
            "models": [{k: m.get(k) for k in ("id", "version", "task", "sha256", "demo", "trained_on")}
                       for m in models]}


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    settings = dict(doc.get("settings") or {})
    settings.pop("models_dir", None)  # where the models live does not matter, their sha256 does
    return {"software version": (doc.get("software") or {}).get("version"), **settings,
            "models": sorted(f"{m.get('id')}@{m.get('version')} sha256 {m.get('sha256')}"
                             for m in doc.get("models") or [])}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human lines for every compared field that differs between two batch documents."""
    a, b = _comparable(old), _comparable(new)
    return [f"{k}: {a.get(k)!r} in {BATCH_JSON}, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def read_batch_json(out: Path) -> dict[str, Any] | None:
    path = out / BATCH_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OutputError(f"{path} cannot be read ({e}); it is not a covidct batch folder, or it is damaged. "
                          "Use another output folder, or --overwrite to start the cohort again") from e


def check_or_write(out: Path, doc: dict[str, Any], overwrite: bool) -> None:
    """Refuse a folder run with other settings/models (unless ``overwrite``), then write ``batch.json``."""
    old = read_batch_json(out)
    if old is not None and not overwrite:
        diff = differences(old, doc)
        if diff:
            raise OutputError(f"{out} holds a cohort analysed with other settings or models: " + "; ".join(diff)
                              + ". Refusing to mix them in one summary: pass --overwrite to analyse every scan "
                              "again with the current ones, or choose another output folder.")
    if old is None and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out} is not empty and has no {BATCH_JSON}; it is not a covidct batch folder. "
                              "Choose a new or empty folder (or pass --overwrite to use it anyway).")
    write_json(out / BATCH_JSON, doc)  # atomic: parallel job-array parts may write the same file


def models_or_error(settings: AnalysisSettings) -> list[dict[str, Any]]:
    """``resolve_models`` with the batch's own hint in the message."""
    try:
        return resolve_models(settings)
    except ModelError as e:
        raise ModelError(f"{e} (or run the cohort with --method threshold, which needs no model)") from e
