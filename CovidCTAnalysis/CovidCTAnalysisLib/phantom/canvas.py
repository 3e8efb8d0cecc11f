"""Drawing surface for the synthetic chest phantoms.

The phantom's anatomy is defined analytically in *patient* coordinates: LPS
millimetres relative to the chest centre, divided by the patient's scale
("normalized mm", so that one anatomy description fits every body size). The
canvas is a grid whose array axes are the patient axes (z, y, x) and whose
coordinate vectors may run in either direction, so a signed axis permutation
of any image grid is rendered exactly and then only transposed.

Shapes are evaluated on broadcast coordinate vectors, x as (1, 1, nx), y as
(1, ny, 1), z as (nz, 1, 1): terms that depend on one or two axes cost 1-D or
2-D work, which keeps a 512 x 512 x 300 phantom to seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from CovidCTAnalysisLib.constants import AIR_HU

Box = tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray]


class Canvas:
    """HU (float32) and label (uint8) arrays over a patient-aligned grid."""

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, voxel_mm: float) -> None:
        # 1-D, monotonic (ascending or descending) normalized coordinates of each array index.
        self.x = np.asarray(x, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.float32)
        self.z = np.asarray(z, dtype=np.float32)
        self.voxel_mm = float(voxel_mm)  # typical voxel edge, normalized mm (anti-aliasing width)
        shape = (self.z.size, self.y.size, self.x.size)
        self.hu = np.full(shape, AIR_HU, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    @staticmethod
    def _range(coords: np.ndarray, lo: float, hi: float) -> slice | None:
        idx = np.nonzero((coords >= lo) & (coords <= hi))[0]
        if idx.size == 0:
            return None
        return slice(int(idx[0]), int(idx[-1]) + 1)

    def box(self, lo, hi) -> Box | None:
        """Array slices and broadcast coordinates of the voxels inside an (x, y, z) box."""
        sx = self._range(self.x, lo[0], hi[0])
        sy = self._range(self.y, lo[1], hi[1])
        sz = self._range(self.z, lo[2], hi[2])
        if sx is None or sy is None or sz is None:
            return None
        return (
            (sz, sy, sx),
            self.x[sx][None, None, :],
            self.y[sy][None, :, None],
            self.z[sz][:, None, None],
        )

    def slabs(self, slices_per_slab: int = 16) -> Iterator[Box]:
        """The whole grid as slabs of a few z planes (bounded temporary memory)."""
        x = self.x[None, None, :]
        y = self.y[None, :, None]
        for start in range(0, self.z.size, slices_per_slab):
            sz = slice(start, min(start + slices_per_slab, self.z.size))
            yield (sz, slice(None), slice(None)), x, y, self.z[sz][:, None, None]


class SmoothField:
    """A seeded smooth random field (zero mean, unit SD) sampled by trilinear interpolation.

    Stored on a coarse grid over the chest in normalized mm; used for lung
    texture and for irregular lesion borders.
    """

    def __init__(self, rng: np.random.Generator, step_mm: float = 8.0, smooth_vox: float = 1.2,
                 lo=(-220.0, -170.0, -260.0), hi=(220.0, 170.0, 260.0)) -> None:
        self.step = float(step_mm)
        self.lo = np.asarray(lo, dtype=np.float64)
        self.n = [int(np.ceil((top - bottom) / self.step)) + 1 for bottom, top in zip(lo, hi, strict=True)]
        data = rng.standard_normal((self.n[2], self.n[1], self.n[0]))
        data = ndimage.gaussian_filter(data, smooth_vox, mode="wrap")
        data = (data - data.mean()) / (data.std() + 1e-12)
        self.data = data.astype(np.float32)

    def _weights(self, axis: int, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = (np.asarray(coords, dtype=np.float64).ravel() - self.lo[axis]) / self.step
        t = np.clip(t, 0.0, self.n[axis] - 1.0)
        i0 = np.minimum(np.floor(t).astype(np.int64), self.n[axis] - 2)
        return i0, (t - i0).astype(np.float32)

    def plane_stack(self, x: np.ndarray, y: np.ndarray, z_rows: slice = slice(None)) -> np.ndarray:
        """The field interpolated in x and y for each coarse z plane (of ``z_rows``): (Gz, ny, nx)."""
        ix, fx = self._weights(0, x)
        iy, fy = self._weights(1, y)
        data = self.data[z_rows]
        f = data[:, :, ix] * (1.0 - fx) + data[:, :, ix + 1] * fx  # (Gz, Gy, nx)
        fy = fy[None, :, None]
        return f[:, iy, :] * (1.0 - fy) + f[:, iy + 1, :] * fy

    def from_planes(self, planes: np.ndarray, z: np.ndarray, first_row: int = 0) -> np.ndarray:
        """Finish the interpolation along z for the planes of :meth:`plane_stack`."""
        i0, f = self._weights(2, z)
        i0 = i0 - first_row
        f = f[:, None, None]
        return planes[i0] * (1.0 - f) + planes[i0 + 1] * f

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Field on the grid spanned by 1-D (or broadcast) x, y, z vectors: (nz, ny, nx)."""
        iz, _ = self._weights(2, z)
        first = int(iz.min())
        planes = self.plane_stack(x, y, slice(first, int(iz.max()) + 2))
        return self.from_planes(planes, z, first)


def tube_weight(x, y, z, a, b, ra: float, rb: float, soft_mm: float) -> np.ndarray:
    """Fraction (0..1) of each voxel inside a cone frustum from point a (radius ra) to b (rb).

    The edge is ramped over ``soft_mm`` so that thin tubes keep their
    partial-volume weight instead of turning into stair steps.
    """
    a = np.asarray(a, dtype=np.float32)
    ab = np.asarray(b, dtype=np.float32) - a
    length2 = float(ab @ ab) + 1e-9
    dx, dy, dz = x - a[0], y - a[1], z - a[2]
    t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) / length2, 0.0, 1.0)
    ex, ey, ez = dx - t * ab[0], dy - t * ab[1], dz - t * ab[2]
    dist = np.sqrt(ex * ex + ey * ey + ez * ez)
    radius = ra + (rb - ra) * t
    return np.clip((radius - dist) / soft_mm + 0.5, 0.0, 1.0)


def tube_box(a, b, r: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    pad = r + margin
    return np.minimum(a, b) - pad, np.maximum(a, b) + pad


def ellipsoid_radius(x, y, z, centre, radii, rotation: np.ndarray | None = None) -> np.ndarray:
    """Normalized ellipsoid radius (1 on the surface), optionally rotated (columns = axes)."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    if rotation is not None:
        r = rotation
        u = dx * r[0, 0] + dy * r[1, 0] + dz * r[2, 0]
        v = dx * r[0, 1] + dy * r[1, 1] + dz * r[2, 1]
        w = dx * r[0, 2] + dy * r[1, 2] + dz * r[2, 2]
        dx, dy, dz = u, v, w
    return np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2)
