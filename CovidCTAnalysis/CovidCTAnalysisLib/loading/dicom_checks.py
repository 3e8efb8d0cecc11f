"""Order the slices of one DICOM series and check that they form a regular volume.

Slices are sorted by ImagePositionPatient projected on the slice normal
(row cosines x column cosines), never by file name or InstanceNumber. The
geometry (origin, direction, spacing) comes straight from the headers. A series
that cannot be represented exactly as a regular 3D grid is refused with an
``InputError`` that says what is wrong and what to do: missing slices, uneven
spacing, gantry tilt (slices not stacked along their normal), duplicate
positions, mixed orientations or sizes. Nothing is resampled silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.loading.dicom_scan import InstanceHeader

# A slice position may be off the regular grid by this fraction of the spacing
# (DS rounding in real headers is far below this; a real irregularity is far above).
GRID_TOLERANCE = 0.05
# A gap this many times the typical spacing means slices are missing.
MISSING_SLICE_FACTOR = 1.5
# Slice origins may drift sideways from the normal by this fraction of a pixel.
TILT_TOLERANCE_PIXELS = 0.1


@dataclass(frozen=True)
class SliceGeometry:
    """Sorted instances and the exact 3D grid they form (LPS, SimpleITK order)."""

    instances: tuple[InstanceHeader, ...]  # ordered along the slice normal (z index order)
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]  # (x = column spacing, y = row spacing, z = slice spacing)
    direction: tuple[float, ...]  # row-major 3x3; columns are the x, y, z axis directions
    size: tuple[int, int, int]  # (columns, rows, slices)


def order_slices(instances: list[InstanceHeader], what: str) -> SliceGeometry:
    """Sort ``instances`` along the slice normal and check the grid; ``what`` names the series."""
    if any(i.number_of_frames > 1 for i in instances):
        raise InputError(f"{what} is a multi-frame (enhanced) image; expected one image per slice "
                         "(classic CT Image Storage). Export the series as single-frame images.")
    if len(instances) < 2:
        raise InputError(f"{what} has {len(instances)} image; a CT volume needs at least 2 slices "
                         "(expected a full chest series).")
    names = {"position": "ImagePositionPatient", "orientation": "ImageOrientationPatient",
             "pixel_spacing": "PixelSpacing"}
    missing = [label for attr, label in names.items() if any(getattr(i, attr) is None for i in instances)]
    if missing:
        raise InputError(f"{what}: {', '.join(missing)} missing or malformed in some images; "
                         "expected a CT series with full image-plane geometry.")
    _check_same(instances, what, "rows", "Rows")
    _check_same(instances, what, "columns", "Columns")
    _check_same(instances, what, "pixel_spacing", "PixelSpacing", tol=1e-4)
    _check_same(instances, what, "orientation", "ImageOrientationPatient", tol=1e-4)

    first = instances[0]
    row = np.array(first.orientation[:3], dtype=float)  # type: ignore[index]
    col = np.array(first.orientation[3:], dtype=float)  # type: ignore[index]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(f"{what}: ImageOrientationPatient {list(first.orientation)} is not two orthogonal "  # type: ignore[arg-type]
                         "unit vectors; the header is damaged.")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)

    positions = np.array([i.position for i in instances], dtype=float)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    sorted_instances = tuple(instances[k] for k in order)
    diffs = np.diff(along)
    step = float(np.median(diffs))
    row_sp, col_sp = (float(v) for v in first.pixel_spacing)  # type: ignore[misc]
    if step <= 1e-3:
        raise InputError(f"{what}: most slices share one position along the slice normal; expected one image "
                         "per slice position. Choose a single acquisition (--series-uid) or clean the folder.")
    dup = np.flatnonzero(diffs < GRID_TOLERANCE * step)
    if dup.size:
        raise InputError(f"{what}: {dup.size} slice(s) duplicate the position of another (e.g. at "
                         f"{along[dup[0]]:.2f} mm along the normal); expected one image per position. "
                         "The folder may hold two acquisitions with one SeriesInstanceUID.")

    _check_tilt(positions, normal, first, what, min(row_sp, col_sp))

    gaps = np.flatnonzero(diffs > MISSING_SLICE_FACTOR * step)
    if gaps.size:
        k = int(gaps[0])
        n_missing = int(round(sum(diffs[g] / step - 1 for g in gaps)))
        raise InputError(f"{what}: missing slice(s): a gap of {diffs[k]:.2f} mm between slices at {along[k]:.2f} "
                         f"and {along[k + 1]:.2f} mm along the normal, where the spacing is {step:.2f} mm "
                         f"(about {max(n_missing, 1)} slice(s) missing in {gaps.size} gap(s)). "
                         "Export the complete series.")
    spacing_z = float((along[-1] - along[0]) / (len(along) - 1))
    off_grid = np.abs(along - (along[0] + spacing_z * np.arange(len(along))))
    if off_grid.max() > max(GRID_TOLERANCE * spacing_z, 1e-3):
        raise InputError(f"{what}: uneven slice spacing: steps from {diffs.min():.3f} to {diffs.max():.3f} mm "
                         f"(a slice lies {off_grid.max():.3f} mm off a regular {spacing_z:.3f} mm grid); "
                         "expected evenly spaced slices. Resample the series to a regular spacing first.")
    direction = np.column_stack([row, col, normal])
    return SliceGeometry(
        instances=sorted_instances,
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        spacing=(col_sp, row_sp, spacing_z),
        direction=tuple(float(v) for v in direction.ravel()),
        size=(first.columns, first.rows, len(sorted_instances)),
    )


def _check_tilt(positions: np.ndarray, normal: np.ndarray, first: InstanceHeader, what: str,
                pixel: float) -> None:
    """Refuse stacks whose slice origins drift sideways: gantry tilt (a sheared volume)."""
    rel = positions - positions[0]
    sideways = rel - np.outer(rel @ normal, normal)
    drift = float(np.linalg.norm(sideways, axis=1).max())
    if drift <= TILT_TOLERANCE_PIXELS * pixel:
        return
    stack = positions[-1] - positions[0]
    angle = float(np.degrees(np.arccos(min(1.0, abs(stack @ normal) / np.linalg.norm(stack)))))
    header = f" (GantryDetectorTilt = {first.gantry_tilt:g})" if first.gantry_tilt else ""
    raise InputError(f"{what}: gantry tilt: the slices are stacked at {angle:.1f} degrees to their normal"
                     f"{header}, so the volume is sheared; expected slices stacked along their normal. "
                     "This tool does not resample tilted series; correct the tilt first (e.g. Slicer's "
                     "DICOM 'acquisition geometry regularization') and save as NIfTI/NRRD.")


def _check_same(instances: list[InstanceHeader], what: str, attr: str, label: str, tol: float = 0.0) -> None:
    ref = getattr(instances[0], attr)
    for inst in instances[1:]:
        v = getattr(inst, attr)
        same = (v == ref) if tol == 0.0 else np.allclose(np.asarray(v, float), np.asarray(ref, float), atol=tol)
        if not same:
            raise InputError(f"{what}: {label} differs between images ({ref} vs {v}); expected one value for the "
                             "whole series. The series mixes several reconstructions; pick one with --series-uid.")
