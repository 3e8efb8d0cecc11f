"""Patient geometry, the one place for it: which patient axis an image axis runs along, axis-aligned grids
covering an image, and the bounding box of a mask.

Conventions used everywhere in the core:

- Images are LPS. Column ``j`` of the direction matrix is the LPS direction of image index axis ``j``
  (x, y, z); the numpy axis of index axis ``j`` is ``2 - j`` (arrays are (z, y, x)).
- **Patient axes.** Each image axis runs along one patient (LPS) axis: the one-to-one pairing with the
  largest total |cosine|. For tilts under 45 degrees that is simply each column's largest entry; unlike
  that rule it is always one-to-one. Oblique images are thereby treated as their nearest axis-aligned
  orientation, as radiology viewers do.
- **Grids (one corner convention).** An image covers the box spanned by the outer edges of its voxels
  (centres +- half a voxel). An axis-aligned grid covering it puts the outer edge of its first voxel on
  that box's low corner, so its origin (the first voxel's centre) is ``low + spacing / 2``, and has
  ``round(extent / spacing)`` voxels per axis (at least 1); ``margin_mm`` widens the box on every side.
  For a pure flip/permutation at the image's own spacing the grid's voxel centres are the image's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def direction_matrix(image_or_direction) -> np.ndarray:
    """3x3 float direction matrix of an sitk image, a flat 9-tuple or a 3x3 array."""
    d = image_or_direction.GetDirection() if isinstance(image_or_direction, sitk.Image) else image_or_direction
    return np.asarray(d, dtype=float).reshape(3, 3)


@dataclass(frozen=True)
class PatientAxes:
    """Image index axis j (0 = x, 1 = y, 2 = z) runs along LPS axis ``lps_of_index[j]``; ``sign[j]`` is +1
    when increasing index j moves towards +LPS (patient's left, posterior, superior), else -1."""

    lps_of_index: tuple[int, int, int]
    sign: tuple[float, float, float]

    def index_axis_along(self, lps_axis: int) -> int:
        """The image index axis (0 = x, 1 = y, 2 = z) running along LPS axis ``lps_axis``."""
        return self.lps_of_index.index(lps_axis)

    def numpy_axis_along(self, lps_axis: int) -> tuple[int, float]:
        """(numpy axis of a (z, y, x) array, sign) running along LPS axis ``lps_axis``."""
        j = self.index_axis_along(lps_axis)
        return 2 - j, self.sign[j]


def patient_axes(image_or_direction) -> PatientAxes:
    """Which patient axis each image axis runs along (module doc: the one-to-one pairing)."""
    d = direction_matrix(image_or_direction)
    a = np.abs(d)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(a[p[j], j] for j in range(3)))
    return PatientAxes(tuple(int(k) for k in best),  # type: ignore[arg-type]
                       tuple(1.0 if d[best[j], j] >= 0 else -1.0 for j in range(3)))  # type: ignore[arg-type]


def is_axis_aligned(image_or_direction, atol: float = 1e-6) -> bool:
    """Whether the direction matrix is a signed permutation (flips/axis swaps only, no tilt)."""
    a = np.abs(direction_matrix(image_or_direction))
    return bool(np.allclose(a, np.round(a), atol=atol) and np.allclose(a.sum(axis=0), 1.0, atol=atol))


def voxel_box(size, spacing, origin, direction) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) LPS mm corners of the box spanned by the outer edges of all voxels."""
    d = direction_matrix(direction)
    s, n = np.asarray(spacing, float), np.asarray(size, float)
    corners = np.array(list(itertools.product(*[(-0.5, m - 0.5) for m in n])))  # continuous index (x, y, z)
    phys = np.asarray(origin, float)[None, :] + (corners * s[None, :]) @ d.T
    return phys.min(axis=0), phys.max(axis=0)


@dataclass(frozen=True)
class AlignedGrid:
    """An identity-direction grid: ``origin`` is the first voxel's centre (LPS mm), arrays are (z, y, x)."""

    origin: np.ndarray
    spacing: np.ndarray
    size: tuple[int, int, int]

    def centres(self, lps_axis: int) -> np.ndarray:
        """Voxel-centre coordinates (mm) along LPS axis ``lps_axis``."""
        return self.origin[lps_axis] + self.spacing[lps_axis] * np.arange(self.size[lps_axis])

    def reference(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An sitk image with this geometry (for ``sitk.Resample``)."""
        ref = sitk.Image([int(v) for v in self.size], pixel_type)
        ref.SetSpacing([float(v) for v in self.spacing])
        ref.SetOrigin([float(v) for v in self.origin])
        ref.SetDirection(IDENTITY_DIRECTION)
        return ref


def aligned_grid(image: sitk.Image | None = None, spacing=None, margin_mm=0.0, *,
                 geometry: tuple | None = None) -> AlignedGrid:
    """The axis-aligned LPS grid covering ``image`` (or ``geometry`` = (size, spacing, origin, direction),
    for a grid that exists only as numbers), by the module's corner convention.

    ``spacing``: mm, one number or (x, y, z); None gives each LPS axis the spacing of the image axis
    running along it (``patient_axes``). ``margin_mm`` (one number or per axis) widens the box per side.
    """
    if geometry is None:
        geometry = (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    size, in_spacing, origin, direction = geometry
    if spacing is None:
        axes = patient_axes(direction)
        sp = np.asarray(in_spacing, float)[[axes.index_axis_along(k) for k in range(3)]]
    else:
        sp = np.broadcast_to(np.asarray(spacing, float), (3,)).copy()
    lo, hi = voxel_box(size, in_spacing, origin, direction)
    margin = np.broadcast_to(np.asarray(margin_mm, float), (3,))
    lo, hi = lo - margin, hi + margin
    n = np.maximum(np.round((hi - lo) / sp).astype(int), 1)
    return AlignedGrid(origin=lo + sp / 2.0, spacing=sp, size=tuple(int(v) for v in n))  # type: ignore[arg-type]


def bounding_box(mask: np.ndarray, pad=0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True voxel of ``mask`` (any number of axes), grown by
    ``pad`` voxels per side (one number or one per axis) and clipped to the array; None if empty.

    Projections per axis, not ``np.argwhere`` (which costs 8 bytes per voxel per axis).
    """
    if not mask.any():
        return None
    pads = np.broadcast_to(np.asarray(pad, int), (mask.ndim,))
    out = []
    for axis in range(mask.ndim):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        out.append(slice(max(0, int(hit[0]) - int(pads[axis])), min(mask.shape[axis], int(hit[-1]) + 1 + int(pads[axis]))))
    return tuple(out)
