"""Trachea and main bronchi on the aligned working grid.

The trachea is found as a small, round, nearly pure-air region near the body's
left-right centre in the most superior axial slices that hold one; the airway
tree is then grown from it with a strict air threshold that is raised step by
step until the grown volume jumps (the growth has leaked into the lung
parenchyma), keeping the last step before the jump. At a ~2 mm grid this holds
the trachea, the main bronchi and the first lobar branches.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

# A trachea cross-section: 8-30 mm across, nearly pure air.
TRACHEA_AREA_MM2 = (50.0, 700.0)
TRACHEA_MAX_MEAN_HU = -850.0
TRACHEA_MAX_OFFSET_MM = 40.0  # from the body's left-right centre
# Airway growing: thresholds tried in turn; a step whose volume grows more than
# LEAK_FACTOR-fold over the previous one (or past MAX_AIRWAY_ML) has leaked.
GROW_UPPER_HU = (-990.0, -975.0, -960.0, -945.0, -930.0, -915.0, -900.0)
LEAK_FACTOR = 2.0
MAX_AIRWAY_ML = 250.0
MIN_LEAK_TEST_ML = 5.0  # below this the trachea is still filling in, not leaking


def find_trachea_seed(
    hu: np.ndarray, inside_air: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[int, int, int] | None:
    """(x, y, z) index of a voxel in the trachea, or None if none is seen.

    Searches the axial slices from the top down, stopping at the first slice
    that has exactly one trachea-like region (above the lung apices the trachea
    is alone; lower, the lungs are large and fail the area test).
    """
    pixel_mm2 = spacing[0] * spacing[1]
    for z in range(hu.shape[0] - 1, -1, -1):
        air = inside_air[z]
        if not air.any():
            continue
        body_x = np.nonzero(body[z].any(axis=0))[0]
        centre_x = 0.5 * (body_x[0] + body_x[-1])
        labels, n = ndi.label(air)
        index = np.arange(1, n + 1)
        areas = ndi.sum_labels(np.ones_like(labels), labels, index) * pixel_mm2
        means = ndi.mean(hu[z], labels, index)
        centres = ndi.center_of_mass(air, labels, index)
        hits = [
            (int(round(c[1])), int(round(c[0])))
            for a, m, c in zip(areas, means, centres, strict=True)
            if TRACHEA_AREA_MM2[0] <= a <= TRACHEA_AREA_MM2[1]
            and m <= TRACHEA_MAX_MEAN_HU
            and abs(c[1] - centre_x) * spacing[0] <= TRACHEA_MAX_OFFSET_MM
        ]
        if len(hits) == 1:
            x, y = hits[0]
            if air[y, x]:
                return x, y, z
    return None


def grow_airway(work: sitk.Image, inside_air: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray:
    """Airway mask (z, y, x) grown from ``seed`` without leaking into the lungs."""
    voxel_ml = float(np.prod(work.GetSpacing())) / 1000.0
    allowed = sitk.GetImageFromArray(inside_air.astype(np.uint8))
    allowed.CopyInformation(work)
    masked = sitk.Mask(work, allowed, outsideValue=0.0)  # 0 HU: never airway
    best = np.zeros(inside_air.shape, dtype=bool)
    previous = 0
    for upper in GROW_UPPER_HU:
        grown = sitk.ConnectedThreshold(masked, seedList=[seed], lower=-4000.0, upper=upper)
        mask = sitk.GetArrayFromImage(grown).astype(bool)
        count = int(mask.sum())
        leaked = previous * voxel_ml >= MIN_LEAK_TEST_ML and count > LEAK_FACTOR * previous
        if count * voxel_ml > MAX_AIRWAY_ML or leaked:
            break
        best, previous = mask, count
    return best
