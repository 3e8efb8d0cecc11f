"""Cases -> 2-D classifier inputs, made exactly as the core makes them at inference.

The lungs are found with the core's ``lungs_threshold.segment_lungs`` (or, for phantoms,
optionally the truth), ``lung_extent`` gives the lung slices and box, the core's
``classify.lung_slices_hu`` crops and orients them and ``transforms.classifier_inputs``
converts them: the same calls as inference. PNG slices go through ``classifier_inputs_from_gray``.

Which slices train which class: Normal patients give all lung slices; Pneumonia and
COVID-19 patients give their infection-bearing slices when slice labels exist
(COVID-CT-MD slice labels, phantom truth), else all lung slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.constants import CLASS_NAMES
from CovidCTAnalysisLib.transforms import classifier_inputs, classifier_inputs_from_gray, classifier_normalize
from torch.utils.data import Dataset

from .classifier_data import ClassifierCase, labels_by_z, read_volume

NORMAL = CLASS_NAMES.index("Normal")


@dataclass
class CaseSlices:
    """Unnormalised (N, 3, S, S) inputs in 0..1 of one patient, with the class per slice."""

    patient_id: str
    class_index: int
    x: torch.Tensor
    z: list[int]


def lung_image(image: sitk.Image, case: ClassifierCase, source: str = "threshold") -> sitk.Image:
    """Lung labels from the core's threshold method (as at inference) or, for phantoms, the truth."""
    if source == "truth":
        if case.truth is None:
            raise ValueError(f"--lung-mask truth needs a truth labelmap; {case.patient_id} has none")
        truth = sitk.ReadImage(str(case.truth))
        truth.CopyInformation(image)
        return truth
    if source != "threshold":
        raise ValueError(f"lung mask source {source!r}; expected 'threshold' or 'truth'")
    from CovidCTAnalysisLib.lungs_threshold import segment_lungs

    return segment_lungs(image)


def volume_slices(case: ClassifierCase, preprocessing: dict, lung_source: str = "threshold",
                  max_slices: int | None = None, lesion_slices_only: bool = True) -> CaseSlices:
    """The lung slices of a volume case, cropped by the core's ``classify.lung_slices_hu`` (as at
    inference) and converted with ``classifier_inputs``."""
    from CovidCTAnalysisLib.classify import lung_slices_hu
    from CovidCTAnalysisLib.lungs_threshold import lung_extent

    image = read_volume(case.image)
    extent = lung_extent(lung_image(image, case, lung_source))
    hu, used = lung_slices_hu(image, extent, step=1)
    keep = list(range(len(used)))
    labels = case.slice_labels
    if labels is not None and case.class_index != NORMAL and lesion_slices_only:
        labels = labels_by_z(labels, image) if case.labels_superior_first else np.asarray(labels)
        n_z = image.GetSize()[2]
        if labels.size < n_z:
            raise ValueError(f"{case.patient_id}: {labels.size} slice labels for {n_z} slices")
        if int(getattr(extent, "axial_axis", 0)) == 0:  # labels are per z index; usual axial scans
            positive = [i for i, z in enumerate(used) if labels[z]]
            keep = positive or keep
    if max_slices and len(keep) > max_slices:
        keep = [keep[i] for i in np.linspace(0, len(keep) - 1, max_slices).round().astype(int)]
    x = classifier_inputs(hu[keep], preprocessing, normalize=False)
    return CaseSlices(case.patient_id, case.class_index, x, [used[i] for i in keep])


def image_slices(case: ClassifierCase, preprocessing: dict, max_slices: int | None = None) -> CaseSlices:
    """2-D PNG/JPG slices (8-bit grey) of one patient."""
    from PIL import Image

    files = list(case.slice_files)
    if max_slices and len(files) > max_slices:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_slices).round().astype(int)]
    xs = []
    for f in files:
        with Image.open(f) as im:
            gray = np.asarray(im.convert("L"), dtype=np.uint8)
        xs.append(classifier_inputs_from_gray(gray[None], preprocessing, normalize=False))
    return CaseSlices(case.patient_id, case.class_index, torch.cat(xs), list(range(len(files))))


def case_slices(case: ClassifierCase, preprocessing: dict, lung_source: str = "threshold",
                max_slices: int | None = None) -> CaseSlices:
    if case.is_volume:
        return volume_slices(case, preprocessing, lung_source, max_slices)
    return image_slices(case, preprocessing, max_slices)


class SliceDataset(Dataset):
    """All slices of some cases; ``transform`` (training augmentation) or inference normalisation."""

    def __init__(self, slices: list[CaseSlices], preprocessing: dict, transform=None) -> None:
        self.x = torch.cat([s.x for s in slices]) if slices else torch.empty(0, 3, 1, 1)
        self.y = torch.tensor([s.class_index for s in slices for _ in range(len(s.x))], dtype=torch.long)
        self.patient = [s.patient_id for s in slices for _ in range(len(s.x))]
        self.preprocessing = preprocessing
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        x = self.transform(x) if self.transform is not None else classifier_normalize(x, self.preprocessing)
        return x, self.y[i]
