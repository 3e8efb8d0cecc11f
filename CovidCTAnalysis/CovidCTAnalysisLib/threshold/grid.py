"""The coarse, patient-aligned working grid of the threshold method.

The HU-threshold lung and lesion finders do their morphology on a coarse grid
whose axes are the LPS axes (array x = patient's left, y = posterior,
z = superior). Any input orientation (flips, permutations, small obliquity) is
resampled onto it, so the rest of the code never has to reason about the
input's direction matrix, and an axial slice is always ``array[z]``.

Down-sampling first averages whole voxels (``BinShrink``, which also averages
away low-dose noise), then resamples linearly onto the aligned grid. Results
go back to the input grid with nearest-neighbour resampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.constants import AIR_HU
from CovidCTAnalysisLib.geometry import aligned_grid

# Morphology and components run at about this spacing; finer grids cost time
# and memory without changing which voxels are lung.
WORKING_SPACING_MM = 2.0


@dataclass(frozen=True)
class WorkingImage:
    """HU resampled onto the aligned grid, plus where the input had no data."""

    image: sitk.Image  # float32 HU, identity direction
    hu: np.ndarray  # (z, y, x) float32 view of ``image``
    outside_fov: np.ndarray  # (z, y, x) bool: no input voxel here


def _shrink_factors(spacing: tuple[float, ...], target_mm: float) -> list[int]:
    # The smallest whole factor that reaches 80 % of the target: 0.7 mm -> 2.1 mm,
    # 1.5 mm -> 3 mm, 2 mm stays 2 mm.
    return [max(1, int(np.ceil(0.8 * target_mm / s - 1e-6))) for s in spacing]


def aligned_reference(shrunk: sitk.Image) -> sitk.Image:
    """An identity-direction grid covering ``shrunk`` at its own spacing (``geometry.aligned_grid``).

    Each LPS axis takes the spacing of the image axis that runs along it, so
    for pure flips/permutations voxel centres coincide with input voxel centres
    and the resampling is exact.
    """
    return aligned_grid(shrunk).reference()


def to_working(image: sitk.Image, target_mm: float = WORKING_SPACING_MM) -> WorkingImage:
    """Average-shrink ``image`` and resample it (HU, float32) onto the aligned grid."""
    factors = _shrink_factors(image.GetSpacing(), target_mm)
    # Shrink before casting: a float copy of a full-resolution CT is large.
    src = sitk.BinShrink(image, factors) if any(f > 1 for f in factors) else image
    src = sitk.Cast(src, sitk.sitkFloat32)
    ref = aligned_reference(src)
    work = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(AIR_HU), sitk.sitkFloat32)
    # Mark voxels with no input data by resampling a sentinel-filled copy.
    ones = sitk.Image(src.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(src)
    inside = sitk.Resample(ones, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return WorkingImage(
        image=work,
        hu=sitk.GetArrayViewFromImage(work),
        outside_fov=sitk.GetArrayViewFromImage(inside) == 0,
    )


def to_isotropic(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """HU (float32) on an identity-direction grid of exactly ``spacing_mm`` covering ``image``.

    Whole input voxels are averaged first (``BinShrink`` by the largest factor
    that stays below ``spacing_mm``), then resampled linearly.
    """
    factors = [max(1, int(np.floor(spacing_mm / s + 1e-6))) for s in image.GetSpacing()]
    src = sitk.BinShrink(image, factors) if any(f > 1 for f in factors) else image
    src = sitk.Cast(src, sitk.sitkFloat32)
    ref = aligned_grid(image, spacing_mm).reference()
    return sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(AIR_HU), sitk.sitkFloat32)


def array_to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array in ``reference``'s geometry."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.CopyInformation(reference)
    return out


def labels_to_grid(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of a label image onto ``reference``'s grid (uint8)."""
    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
