"""One segmentation case -> arrays on the model grid, as the core's ``segment`` sees them.

The CT is cropped to the lung box plus ``margin_mm`` (inference crops to the lungs found by
the threshold method; training uses the labelled lungs when the labels have lungs, else
the same threshold method), then ``transforms.segmenter_preprocess`` resamples it to the
model spacing and scales HU.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.models.transforms import segmenter_preprocess, segmenter_settings

from training.segmenter_data import SegCase, read_image_hu, read_label


def prepare_case(case: SegCase, preprocessing: dict, n_labels: int, sides: str = "warn",
                 radiopaedia_hu: bool = True) -> dict:
    """``{"image": (1, z, y, x) float32 0..1, "label": (1, z, y, x) uint8, "id": ...}``."""
    p = segmenter_settings(preprocessing)
    image = read_image_hu(case, radiopaedia_hu)
    label = read_label(case, n_labels, sides)
    if label.GetSize() != image.GetSize():
        raise ValueError(f"{case.case_id}: label size {label.GetSize()} differs from image size {image.GetSize()}")
    label.CopyInformation(image)  # masks are sometimes saved with rounded geometry
    from CovidCTAnalysisLib.inference.segment import lung_box_with_margin
    from CovidCTAnalysisLib.threshold.lungs import lung_extent, segment_lungs

    lungs = label if case.lungs_labelled else segment_lungs(image)
    box = lung_box_with_margin(image, lung_extent(lungs), float(p["margin_mm"]))
    index, size = list(box[:3]), [b - a for a, b in zip(box[:3], box[3:], strict=True)]
    image = sitk.RegionOfInterest(image, size, index)
    label = sitk.RegionOfInterest(label, size, index)
    out = segmenter_preprocess(image, p, label)
    return {"image": out.image[None].astype(np.float32), "label": out.label[None].astype(np.uint8),
            "id": case.case_id}
