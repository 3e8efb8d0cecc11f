"""What the scan shows of the lungs, and how finely: notes that limit what its results mean.

Neither is a refusal. Thick slices (8-10 mm were common in early COVID-19 CT) blur small lesions into the
lung around them; a field of view that cuts the lungs leaves part of each lung out of every volume and
percentage. Both are accepted and said: thick slices in ``input.notes``, a cut lung in ``warnings``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

THICK_SLICE_MM = 5.0  # thin-slice chest CT is <= 1.5 mm; 5 mm reconstructions are routine, beyond is thick
MIN_LUNG_RATIO = 0.25  # one lung under a quarter of the other: cut off, collapsed, removed or missed
MIN_CUT_VOXELS = 20  # lung voxels on an image edge before we call the lung cut (a few are partial-volume noise)
# LPS direction names: (+axis, -axis)
_LPS_NAMES = (("left", "right"), ("posterior", "anterior"), ("superior", "inferior"))


def slice_axis(image: sitk.Image) -> int:
    """Index axis (0=i, 1=j, 2=k) that points most along the patient's head-foot (LPS z) direction."""
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    return int(np.argmax(np.abs(d[2, :])))


def thick_slice_note(image: sitk.Image) -> str | None:
    """A note when slices are more than ``THICK_SLICE_MM`` apart; None otherwise."""
    s = float(image.GetSpacing()[slice_axis(image)])
    if s <= THICK_SLICE_MM:
        return None
    return (f"thick slices ({s:g} mm apart; thin-slice chest CT is about 1 mm): each voxel averages {s:g} mm of tissue, "
            "so faint ground-glass is diluted into the lung around it and lesions thinner than a slice are missed or "
            f"drawn a full slice thick; lesion volumes can be off by up to half a slice ({s / 2:g} mm) at each lesion "
            "edge, most for small lesions. Compare volumes only between scans of similar slice thickness")


def _edge_names(image: sitk.Image, index_axis: int) -> tuple[str, str]:
    """Patient-side names of the first and the last face of ``index_axis``."""
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)[:, index_axis]
    lps = int(np.argmax(np.abs(d)))
    plus, minus = _LPS_NAMES[lps]
    return (minus, plus) if d[lps] > 0 else (plus, minus)  # index 0 lies towards -d


def fov_cut_warning(labelmap: sitk.Image) -> str | None:
    """A warning when lung (any label > 0) lies on an edge of the image, i.e. the scan cuts the lungs; else None."""
    arr = sitk.GetArrayViewFromImage(labelmap)
    cuts = []
    for index_axis in range(3):
        np_axis = 2 - index_axis
        first, last = _edge_names(labelmap, index_axis)
        for name, face in ((first, np.take(arr, 0, axis=np_axis)), (last, np.take(arr, -1, axis=np_axis))):
            n = int(np.count_nonzero(face))
            if n >= MIN_CUT_VOXELS:
                cuts.append(f"{name} ({n} voxels)")
    if not cuts:
        return None
    return (f"the scan cuts the lungs: lung lies on the image's {', '.join(cuts)} edge; the lung beyond it is not in "
            "the scan, so volumes and lesion percent describe only the part shown")


def lung_balance_warning(left_ml: float, right_ml: float) -> str | None:
    """A warning when one lung measures under ``MIN_LUNG_RATIO`` of the other; None otherwise.

    The right lung is ~10-20 % larger than the left in health; a lung at a quarter of the other is a cut
    field of view (the threshold method leaves out a lung that the image edge cuts open), a collapsed or
    removed lung, or a missed segmentation: in every case its numbers need a look at the preview.
    """
    small, large = sorted((float(left_ml), float(right_ml)))
    if large <= 0 or small >= MIN_LUNG_RATIO * large:
        return None
    side = "left" if float(left_ml) < float(right_ml) else "right"
    return (f"the {side} lung measures {small:.0f} mL, under {MIN_LUNG_RATIO:.0%} of the other ({large:.0f} mL): it may "
            "be cut off by the field of view, collapsed or removed, or missed by the segmentation; check the preview")
