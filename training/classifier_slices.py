"""Cases -> 2-D classifier inputs, made exactly as the core makes them at inference.

The lungs are found with the core's ``lungs_threshold.segment_lungs`` (or, for phantoms,
optionally the truth), ``lung_extent`` gives the lung slices and box, the core's
``classify.lung_slices_hu`` crops and orients them and ``transforms.classifier_inputs``
converts them: the same calls as inference. PNG slices go through ``classifier_inputs_from_gray``.

Which slices train which class (slice labels: COVID-CT-MD's, a CSV's .npy, or the phantom truth):

- Normal patients: their lung slices, labelled Normal.
- Pneumonia and COVID-19 patients with slice labels: their infection-bearing slices,
  labelled with the patient's class, and (``clear_slices="normal"``, the default) some of
  their infection-free slices labelled Normal. A slice without infection looks normal,
  whoever it belongs to; and without such slices the disease classes would own the lower
  lung zones (where COVID-19 GGO sits) and the network would learn slice height instead of
  opacity: the first demo classifier did, and called Normal and COVID-19 phantoms of one
  anatomy alike. Slices labelled ``classifier_data.TRACE_SLICE`` (a lesion's tip) train neither.
- Patients without slice labels: all lung slices, labelled with the patient's class.

``normal_heights`` (``train_classifier`` passes the heights of the disease slices it took) makes
Normal patients give slices at those heights in their lungs (0 = lowest lung slice, 1 = apex)
rather than evenly spread: where lesions sit (low and posterior, for COVID-19) Normal must be
seen as often as disease, or height stays a shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.constants import CLASS_NAMES
from CovidCTAnalysisLib.loading.load import load_ct, read_image_file
from CovidCTAnalysisLib.models.transforms import classifier_inputs, classifier_inputs_from_gray, classifier_normalize
from torch.utils.data import Dataset

from training.classifier_data import ClassifierCase, labels_by_z

NORMAL = CLASS_NAMES.index("Normal")
CLEAR_SLICE_CHOICES = ("normal", "skip")


@dataclass
class CaseSlices:
    """Unnormalised (N, 3, S, S) inputs in 0..1 of one patient, with the class of each slice (``y``)."""

    patient_id: str
    class_index: int  # the patient's class
    x: torch.Tensor
    z: list[int]
    y: list[int] = field(default_factory=list)  # per slice; empty: every slice has the patient's class
    heights: list[float] = field(default_factory=list)  # per slice: 0 lowest lung slice .. 1 apex (volumes)

    def __post_init__(self) -> None:
        self.y = list(self.y) or [self.class_index] * len(self.x)


def lung_image(image: sitk.Image, case: ClassifierCase, source: str = "threshold") -> sitk.Image:
    """Lung labels from the core's threshold method (as at inference) or, for phantoms, the truth."""
    if source == "truth":
        if case.truth is None:
            raise ValueError(f"--lung-mask truth needs a truth labelmap; {case.patient_id} has none")
        truth = read_image_file(case.truth, "phantom truth")
        truth.CopyInformation(image)
        return truth
    if source != "threshold":
        raise ValueError(f"lung mask source {source!r}; expected 'threshold' or 'truth'")
    from CovidCTAnalysisLib.threshold.lungs import segment_lungs

    return segment_lungs(image)


def _spread(indices: list[int], n: int | None) -> list[int]:
    """At most ``n`` of ``indices``, evenly spread (all of them when ``n`` is None)."""
    if not n or len(indices) <= n:
        return list(indices)
    return [indices[i] for i in np.linspace(0, len(indices) - 1, n).round().astype(int)]


def _at_heights(n: int, heights, count: int | None) -> list[int]:
    """Indices among ``n`` slices (inferior -> superior) at ``count`` evenly spaced quantiles of ``heights``."""
    q = np.quantile(np.asarray(heights, dtype=float), np.linspace(0.0, 1.0, count or n))
    return sorted({int(i) for i in np.round(np.clip(q, 0.0, 1.0) * (n - 1))})


def volume_slices(case: ClassifierCase, preprocessing: dict, lung_source: str = "threshold",
                  max_slices: int | None = None, clear_slices: str = "normal",
                  normal_heights=None) -> CaseSlices:
    """The lung slices of a volume case, cropped by the core's ``classify.lung_slices_hu`` (as at
    inference) and converted with ``classifier_inputs``; which slices, and their classes: module doc.

    ``max_slices`` caps each group of a patient: its slices of its own class, and its clear slices
    (at most ``ceil(max_slices / 2)`` of these). ``normal_heights``: module doc.
    """
    from CovidCTAnalysisLib.inference.classify import lung_slices_hu
    from CovidCTAnalysisLib.threshold.lungs import lung_extent

    if clear_slices not in CLEAR_SLICE_CHOICES:
        raise ValueError(f"clear_slices={clear_slices!r}; expected one of {CLEAR_SLICE_CHOICES}")
    image = load_ct(case.image).image  # as inference loads it: the same series, checks and refusals
    extent = lung_extent(lung_image(image, case, lung_source))
    hu, used = lung_slices_hu(image, extent, step=1)
    keep, y = _spread(list(range(len(used))), max_slices), None
    if case.class_index == NORMAL and normal_heights is not None and len(normal_heights):
        keep = _at_heights(len(used), normal_heights, max_slices)
    labels = case.slice_labels
    if labels is not None and case.class_index != NORMAL:
        labels = labels_by_z(labels, image) if case.labels_superior_first else np.asarray(labels)
        n_z = image.GetSize()[2]
        if labels.size < n_z:
            raise ValueError(f"{case.patient_id}: {labels.size} slice labels for {n_z} slices")
        if int(getattr(extent, "axial_axis", 0)) == 0:  # labels are per z index; usual axial scans
            positive = [i for i, z in enumerate(used) if labels[z] == 1]
            clear = [i for i, z in enumerate(used) if labels[z] == 0] if clear_slices == "normal" else []
            if positive:
                positive = _spread(positive, max_slices)
                clear = _spread(clear, -(-max_slices // 2) if max_slices else None)
                keep, own = sorted(positive + clear), set(positive)
                y = [case.class_index if i in own else NORMAL for i in keep]
    x = classifier_inputs(hu[keep], preprocessing, normalize=False)
    heights = [i / max(len(used) - 1, 1) for i in keep]  # lung_slices_hu orders inferior -> superior
    return CaseSlices(case.patient_id, case.class_index, x, [used[i] for i in keep], y or [], heights)


def image_slices(case: ClassifierCase, preprocessing: dict, max_slices: int | None = None) -> CaseSlices:
    """2-D PNG/JPG slices (8-bit grey) of one patient."""
    from PIL import Image

    files = [case.slice_files[i] for i in _spread(list(range(len(case.slice_files))), max_slices)]
    xs = []
    for f in files:
        with Image.open(f) as im:
            gray = np.asarray(im.convert("L"), dtype=np.uint8)
        xs.append(classifier_inputs_from_gray(gray[None], preprocessing, normalize=False))
    return CaseSlices(case.patient_id, case.class_index, torch.cat(xs), list(range(len(files))))


def case_slices(case: ClassifierCase, preprocessing: dict, lung_source: str = "threshold",
                max_slices: int | None = None, clear_slices: str = "normal", normal_heights=None) -> CaseSlices:
    if case.is_volume:
        return volume_slices(case, preprocessing, lung_source, max_slices, clear_slices, normal_heights)
    return image_slices(case, preprocessing, max_slices)


class SliceDataset(Dataset):
    """All slices of some cases; ``transform`` (training augmentation) or inference normalisation."""

    def __init__(self, slices: list[CaseSlices], preprocessing: dict, transform=None) -> None:
        self.x = torch.cat([s.x for s in slices]) if slices else torch.empty(0, 3, 1, 1)
        self.y = torch.tensor([y for s in slices for y in s.y], dtype=torch.long)
        self.patient = [s.patient_id for s in slices for _ in range(len(s.x))]
        self.preprocessing = preprocessing
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        x = self.transform(x) if self.transform is not None else classifier_normalize(x, self.preprocessing)
        return x, self.y[i]
