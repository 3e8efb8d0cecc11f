"""Refusals of images that cannot be analysed.

Each check raises :class:`InputError` with a message that names the offending
value and what was expected, so the CLI can print one actionable line. The
limits live in ``constants.py``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.constants import (
    LOW_LUNG_ML,
    MAX_SPACING_MM,
    MAX_VOXELS,
    MIN_EXTENT_MM,
    MIN_SPACING_MM,
    PEAK_BYTES_PER_VOXEL,
    PLAUSIBLE_HU_RANGE,
)
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.geometry import patient_axes

_AXIS_NAMES = ("x", "y", "z")
_SPACING_ROLE = ("in-plane x spacing", "in-plane y spacing", "slice spacing")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def check_dimension(image: sitk.Image, where: str = "image") -> None:
    """Refuse anything that is not a scalar 3-D volume with at least 2 voxels along each axis."""
    dim = image.GetDimension()
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{where} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         f"({image.GetPixelIDTypeAsString()}); expected a scalar CT volume in HU")
    if dim != 3:
        raise InputError(f"{where} is {dim}-D with size {tuple(size)}; expected a 3-D CT volume "
                         "(a series of axial slices)")
    flat = [i for i, n in enumerate(size) if n < 2]
    if flat:
        raise InputError(f"{where} has size {tuple(size)}: axis {_AXIS_NAMES[flat[0]]} has "
                         f"{size[flat[0]]} voxel, so it is a 2-D image; expected a 3-D CT volume "
                         "with at least 2 voxels along every axis")


def check_spacing(image: sitk.Image) -> None:
    """Refuse spacings outside ``MIN_SPACING_MM``–``MAX_SPACING_MM`` (corrupt headers, wrong units)."""
    spacing = image.GetSpacing()
    for i, s in enumerate(spacing):
        if not np.isfinite(s) or not (MIN_SPACING_MM <= s <= MAX_SPACING_MM):
            raise InputError(f"spacing {_fmt(spacing)} mm: {_SPACING_ROLE[i]} {s:g} is outside "
                             f"{MIN_SPACING_MM:g}–{MAX_SPACING_MM:g} mm; the header is corrupt or not in mm")


def physical_extent_lps(image: sitk.Image) -> tuple[float, float, float]:
    """Extent in mm along LPS x, y, z (each image axis is assigned to the LPS axis it points along most)."""
    axes = patient_axes(image)
    extent = [0.0, 0.0, 0.0]
    for j, (n, s) in enumerate(zip(image.GetSize(), image.GetSpacing(), strict=True)):
        extent[axes.lps_of_index[j]] = n * s
    return tuple(extent)  # type: ignore[return-value]


def check_extent(image: sitk.Image) -> None:
    """Refuse volumes too small (in mm) to hold a pair of lungs."""
    extent = physical_extent_lps(image)
    for i, (e, lo) in enumerate(zip(extent, MIN_EXTENT_MM, strict=True)):
        if e < lo:
            raise InputError(
                f"physical extent {_fmt(round(v, 1) for v in extent)} mm (size {tuple(image.GetSize())} × spacing "
                f"{_fmt(image.GetSpacing())}): {'LR AP SI'.split()[i]} extent {e:.1f} mm is below the {lo:g} mm "
                f"needed to hold lungs (minimum {_fmt(MIN_EXTENT_MM)} mm); expected a chest CT")


def check_values(image: sitk.Image) -> None:
    """Refuse NaN/infinite values, constant volumes and HU outside ``PLAUSIBLE_HU_RANGE``."""
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            z, y, x = (int(v[0]) for v in np.nonzero(bad))
            raise InputError(f"image holds {n_bad} NaN/infinite voxel value(s) (first at index x={x}, y={y}, "
                             f"z={z}); expected finite HU everywhere")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InputError(f"image is constant (every voxel is {lo:g}); expected a CT with air, lung and tissue")
    plo, phi = PLAUSIBLE_HU_RANGE
    if lo < plo or hi > phi:
        raise InputError(f"intensity range [{lo:g}, {hi:g}] is outside the plausible HU range "
                         f"[{plo:g}, {phi:g}]; expected CT values in Hounsfield units")


def check_voxel_count(size, where: str = "image") -> None:
    """Refuse, from the header alone, a scan too large to analyse within the memory target (``MAX_VOXELS``)."""
    n = int(np.prod([int(v) for v in size], dtype=np.int64))
    if n <= MAX_VOXELS:
        return
    dims = "×".join(str(int(v)) for v in size)
    raise InputError(
        f"{where} has size {dims} = {n / 1e6:.0f} million voxels, over the {MAX_VOXELS / 1e6:.0f} million this tool "
        f"analyses within its 4 GB memory target (it would need about {n * PEAK_BYTES_PER_VOXEL / 1e9:.0f} GB); "
        "resample it first to coarser voxels (e.g. 0.8 mm pixels, 1.5 mm slices) or crop it to the chest")


def check_ct_image(image: sitk.Image, where: str = "image") -> None:
    """Run every refusal, cheapest first."""
    check_dimension(image, where)
    check_spacing(image)
    check_extent(image)
    check_values(image)


def lung_coverage_note(left_ml: float, right_ml: float) -> str | None:
    """A warning when the scan shows less than ``LOW_LUNG_ML`` of lung; None otherwise.

    A warning, not a refusal: a scan of the lung bases is a legitimate input, but its class
    and lesion percent describe only the lung it shows, and an abdomen CT is no chest CT.
    """
    total = float(left_ml) + float(right_ml)
    if total >= LOW_LUNG_ML:
        return None
    return (f"only {total:.0f} mL of lung found (left {left_ml:.0f} mL, right {right_ml:.0f} mL; an adult chest CT "
            f"shows several litres): the scan may not cover the chest, and the results describe only the lung it shows")
