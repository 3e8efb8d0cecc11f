"""``metadata.json`` of a model folder: the contract between training and inference.

A model is a folder with ``metadata.json`` and ``model.safetensors``. The
metadata follows the MONAI bundle fields (``version``, ``monai_version``,
``pytorch_version``, ``task``, ``description``, ``intended_use``,
``data_source``, ``eval_metrics``, ``network_data_format``...) and adds what the
core needs to run the model exactly as it was trained:

``id``               stable id, e.g. ``covidct-classifier-demo``
``version``          semantic version string
``task``             ``"classification"``, ``"segmentation"`` or ``"interactive"`` (DeepGrow-style
                     correction by clicks; ``preprocessing`` as in ``models/interactive_settings.py``
                     and a ``click_simulation`` object saying how training simulated the clicks)
``architecture``     ``{"name": "resnet50"|"monai.UNet", "kwargs": {...}}`` passed to
                     ``build_classifier``/``build_segmenter``
``sha256``           of ``model.safetensors``
``demo``             true for DEMO models: trained on synthetic phantoms (and, with ``training_data.mix.real_patients``,
                     synthetic lesions painted into real lesion-free CTs); ``demo_tag`` words it for results
``trained_on``       one line saying what data trained it (shown wherever results appear)
``training_data``    datasets, split, seed, case counts
``eval_metrics``     measured metrics on the held-out split
``intended_use``     always contains "research use, not for diagnosis"
``preprocessing``    classification: ``windows`` [[level, width]...], ``input_size``,
                     ``aggregation`` {"rule": ..., params}, ``slice_step``;
                     segmentation: ``spacing_mm`` [x,y,z], ``hu_range`` [lo,hi],
                     ``roi_size`` [x,y,z], ``sw_overlap``; every key and its default is listed in
                     ``transforms.py`` (``CLASSIFIER_DEFAULTS``, ``SEGMENTER_DEFAULTS``), which
                     also checks them (``validate_preprocessing``)
``labels``           classification: class names in output order;
                     segmentation: {"0": "background", "1": "Left lung", ...} in *our*
                     label convention (1 = left, 2 = right, 3 = lesion)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from CovidCTAnalysisLib.errors import ModelError

METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.safetensors"
MAX_METADATA_BYTES = 1_000_000
TASKS = ("classification", "segmentation", "interactive")
REQUIRED_KEYS = ("id", "version", "task", "architecture", "sha256", "trained_on", "intended_use",
                 "preprocessing", "labels", "eval_metrics", "demo")


@dataclass(frozen=True)
class ModelMetadata:
    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def version(self) -> str:
        return str(self.raw["version"])

    @property
    def task(self) -> str:
        return str(self.raw["task"])

    @property
    def sha256(self) -> str:
        return str(self.raw["sha256"])

    @property
    def demo(self) -> bool:
        return bool(self.raw.get("demo", False))

    @property
    def trained_on(self) -> str:
        return str(self.raw["trained_on"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.raw["preprocessing"])

    @property
    def architecture(self) -> dict[str, Any]:
        return dict(self.raw["architecture"])

    @property
    def labels(self) -> Any:
        return self.raw["labels"]

    @property
    def eval_metrics(self) -> dict[str, Any]:
        return dict(self.raw.get("eval_metrics") or {})

    def provenance(self) -> dict[str, Any]:
        """What every output carries about this model (report.json ``models[]``)."""
        return {
            "id": self.id,
            "version": self.version,
            "task": self.task,
            "sha256": self.sha256,
            "demo": self.demo,
            "demo_tag": demo_tag(self.raw),
            "trained_on": self.trained_on,
            "eval_metrics": self.eval_metrics,
            "intended_use": self.raw["intended_use"],
        }

    def label_line(self) -> str:
        """One human line, e.g. for the Slicer panel and the CLI summary."""
        tag = demo_tag(self.raw)
        return f"{self.id} v{self.version} (sha256 {self.sha256[:12]}){f' [{tag}]' if tag else ''}"


def demo_tag(model: dict[str, Any], short: bool = False) -> str:
    """How the results of a DEMO model say so ('' for a model that is not DEMO). ``model``: its metadata or its
    ``provenance()`` (which carries the tag). The wording follows what it learned from: phantoms only, or also
    real lesion-free CTs with synthetic lesions (``training_data.mix.real_patients``), never a real lesion outline.
    ``short``: for DICOM fields of 64 characters."""
    if not model.get("demo"):
        return ""
    if "demo_tag" in model:  # a provenance() dict
        tag = str(model["demo_tag"])
    else:
        mix = (model.get("training_data") or {}).get("mix") or {}
        n = len(mix.get("real_patients") or [])
        tag = (f"DEMO: trained on synthetic phantoms and synthetic lesions in {n} real CT{'s' if n > 1 else ''}"
               if n else "DEMO: trained on synthetic phantoms")
    if short:
        return "DEMO: synthetic lesions" if "real CT" in tag else "DEMO: synthetic phantoms"
    return tag


def validate_metadata(raw: dict[str, Any], where: str = "metadata.json") -> ModelMetadata:
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ModelError(f"{where} lacks required field(s) {missing}; expected all of {list(REQUIRED_KEYS)}")
    if raw["task"] not in TASKS:
        raise ModelError(f"{where}: task={raw['task']!r}, expected one of {TASKS}")
    if "not for diagnosis" not in str(raw["intended_use"]).lower():
        raise ModelError(f"{where}: intended_use must state 'research use, not for diagnosis'")
    if raw["task"] == "interactive" and not isinstance(raw.get("click_simulation"), dict):
        raise ModelError(f"{where}: an interactive model needs a click_simulation object (how training placed the "
                         f"clicks), got {raw.get('click_simulation')!r}")
    sha = str(raw["sha256"])
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelError(f"{where}: sha256={sha!r} is not a 64-character lowercase hex digest")
    return ModelMetadata(raw=dict(raw))


def read_metadata(model_dir: str | Path) -> ModelMetadata:
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise ModelError(f"{model_dir} is not a model folder: {METADATA_FILE} is missing")
    size = path.stat().st_size
    if size > MAX_METADATA_BYTES:  # a real one is a few kB; never read an untrusted giant into memory
        raise ModelError(f"{path} is {size} bytes, over the {MAX_METADATA_BYTES} a {METADATA_FILE} may have; "
                         "refusing this model folder")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, absurd nesting
        raise ModelError(f"{path} is not valid JSON (UTF-8): {str(e)[:200]}") from e
    if not isinstance(raw, dict):
        raise ModelError(f"{path} holds a {type(raw).__name__}, expected a JSON object")
    return validate_metadata(raw, where=str(path))
