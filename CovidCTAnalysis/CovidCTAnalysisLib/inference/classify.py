"""Normal / Pneumonia / COVID-19 from the lung slices with the ResNet-50 classifier.

The lung slices (from the HU-threshold ``lung_extent``) are cropped to the lung
box, oriented like a radiology viewer shows them (anterior up, patient's right on
the left), turned into network inputs by ``transforms.classifier_inputs`` (the
same function training uses), run through the network in batches, and the slice
probabilities are aggregated by the rule the model's metadata names:

``mean``               mean of the slice softmax vectors.
``top_fraction_mean``  rank slices by their non-Normal probability (1 - P(Normal)) and
                       average the softmax vectors of the top ``fraction`` of them (at
                       least one slice). Disease often shows in a few slices only, so a
                       plain mean over many clear slices would drown it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from CovidCTAnalysisLib.errors import InputError, ModelError
from CovidCTAnalysisLib.loading.volume import CTVolume
from CovidCTAnalysisLib.models.folder import LoadedModel
from CovidCTAnalysisLib.models.metadata import ModelMetadata
from CovidCTAnalysisLib.models.transforms import (
    classifier_inputs,
    classifier_settings,
    lps_orientation,
    orient_array_lps,
)
from CovidCTAnalysisLib.progress import Progress

NORMAL_CLASS = "Normal"


@dataclass(frozen=True)
class ClassificationResult:
    """Aggregated class, probabilities by class name, and the per-slice softmax (N, classes)."""

    label: str
    probabilities: dict[str, float]
    n_slices: int
    slice_probabilities: np.ndarray | None
    model: ModelMetadata
    slice_indices: tuple[int, ...] = ()  # indices along the axial array axis that were classified
    aggregation: str = ""

    def summary(self) -> str:
        probs = ", ".join(f"{k} {100 * v:.1f} %" for k, v in self.probabilities.items())
        return f"{self.label} ({probs}; {self.n_slices} slices, {self.aggregation}) by {self.model.label_line()}"


def aggregate(slice_probs: np.ndarray, class_names: list[str], aggregation: dict[str, Any]) -> np.ndarray:
    """Combine (N, C) slice softmax vectors into one C vector by ``aggregation["rule"]`` (see module doc)."""
    probs = np.asarray(slice_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] != len(class_names):
        raise ValueError(f"slice_probs has shape {probs.shape}; expected (N >= 1, {len(class_names)})")
    rule = aggregation.get("rule")
    if rule == "mean":
        return probs.mean(axis=0)
    if rule == "top_fraction_mean":
        if NORMAL_CLASS not in class_names:
            raise ModelError(f"aggregation top_fraction_mean ranks by 1 - P({NORMAL_CLASS}), but the model's classes "
                             f"are {class_names}")
        fraction = float(aggregation.get("fraction", 0))
        if not 0.0 < fraction <= 1.0:
            raise ModelError(f"aggregation top_fraction_mean: fraction={aggregation.get('fraction')!r}; expected 0 < f <= 1")
        k = max(1, math.ceil(fraction * probs.shape[0]))
        not_normal = 1.0 - probs[:, class_names.index(NORMAL_CLASS)]
        top = np.argsort(-not_normal, kind="stable")[:k]
        return probs[top].mean(axis=0)
    raise ModelError(f"aggregation rule {rule!r} is unknown; expected 'mean' or 'top_fraction_mean'")


def select_slices(indices: np.ndarray, step: int) -> np.ndarray:
    """Every ``step``-th index, centred in the range so both lung ends are treated alike."""
    if step <= 1 or len(indices) <= step:
        return indices if step <= 1 else indices[[len(indices) // 2]]
    offset = ((len(indices) - 1) % step) // 2
    return indices[offset::step]


def lung_slices_hu(image: sitk.Image, lung_extent, step: int = 1) -> tuple[np.ndarray, tuple[int, ...]]:
    """Axial lung slices cropped to the lung box: (N, H, W) float32 HU, rows anterior→posterior and
    columns patient's right→left; and the axial array indices they came from."""
    axis = int(getattr(lung_extent, "axial_axis", 0))
    indices = lung_extent.axial_indices if hasattr(lung_extent, "axial_indices") else lung_extent.z_indices
    all_idx = np.asarray(indices, dtype=int)
    if all_idx.size == 0:
        raise InputError("no lung slices to classify: the lung extent holds no axial slice with lung")
    chosen = select_slices(all_idx, step)
    x0, y0, z0, x1, y1, z1 = (int(v) for v in lung_extent.bbox_index)
    arr = sitk.GetArrayViewFromImage(image)  # (z, y, x), no copy
    box = arr[z0:z1, y0:y1, x0:x1]
    start = (z0, y0, x0)[axis]
    local = chosen - start
    local = local[(local >= 0) & (local < box.shape[axis])]
    if local.size == 0:
        raise InputError(f"the lung slices {chosen.tolist()[:5]}… lie outside the lung box {lung_extent.bbox_index}")
    picked = np.take(box, local, axis=axis).astype(np.float32)
    oriented = orient_array_lps(picked, image)  # (S, P, L): axial slices along axis 0
    used = local + start
    if lps_orientation(image)[1][0]:  # the slice order was flipped to run inferior→superior
        used = used[::-1]
    return np.ascontiguousarray(oriented), tuple(int(i) for i in used)


def classify(volume: CTVolume | sitk.Image, lung_extent, model: LoadedModel, device: torch.device | str,
             progress: Progress | None = None) -> ClassificationResult:
    """Classify the lung slices of ``volume`` with ``model`` and aggregate (module doc).

    ``lung_extent`` is ``threshold.lungs.LungExtent`` (``bbox_index`` inclusive-exclusive,
    ``axial_axis``/``axial_indices`` or ``z_indices``).
    """
    progress = progress or Progress()
    image = volume.image if isinstance(volume, CTVolume) else volume
    meta = model.metadata
    if meta.task != "classification":
        raise ModelError(f"model {meta.id} is a {meta.task} model; classify needs a classification model")
    p = classifier_settings(meta.preprocessing)
    class_names = [str(c) for c in meta.labels]
    slices, used = lung_slices_hu(image, lung_extent, p["slice_step"])
    device = torch.device(device)
    n, bs = slices.shape[0], p["batch_size"]
    out = []
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    model.module.eval()
    with torch.inference_mode():
        for start in range(0, n, bs):
            progress.step("classify", start / n, f"Classifying lung slices {start + 1}-{min(start + bs, n)} of {n}")
            x = classifier_inputs(slices[start:start + bs], p).to(device)
            with autocast:
                logits = model.module(x)
            if logits.shape[-1] != len(class_names):
                raise ModelError(f"model {meta.id} gives {logits.shape[-1]} outputs but its metadata names "
                                 f"{len(class_names)} classes {class_names}")
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    progress.step("classify", 1.0, f"Classified {n} lung slices")
    slice_probs = np.concatenate(out, axis=0)
    agg = aggregate(slice_probs, class_names, p["aggregation"])
    label = class_names[int(np.argmax(agg))]
    rule = p["aggregation"]["rule"] + (f" {p['aggregation']['fraction']}" if "fraction" in p["aggregation"] else "")
    return ClassificationResult(
        label=label,
        probabilities={c: float(v) for c, v in zip(class_names, agg, strict=True)},
        n_slices=int(n),
        slice_probabilities=slice_probs,
        model=meta,
        slice_indices=used,
        aggregation=rule,
    )
