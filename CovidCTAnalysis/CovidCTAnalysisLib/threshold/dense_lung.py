"""Dense lung: consolidation that fills the lung out to the chest wall.

Aerated lung is found by its low HU (``lungs``); lung that is filled with
fluid or cells (lobar consolidation) has the HU of soft tissue and touches
the chest wall, so neither the growth into dependent density nor the hole
filling brings it in. This module adds it, on the aligned working grid
(z, y, x; z = superior), bounded by the anatomy around the lung rather than
by a blind hull of the lung:

* **Ribs**: per axial slice the rib cage is the convex hull of the bone
  (above ``BONE_MIN_HU``) within ``RIB_SEARCH_MM`` of aerated lung (ribs,
  spine and sternum; the arms and shoulder blades lie further out). Only its
  inside, ``CHEST_WALL_MM`` in from the hull and ``BONE_MARGIN_MM`` from bone,
  can be lung; the chest-wall muscles and fat stay outside.
* **Diaphragm**: in every (y, x) column the run of tissue rising from the lowest
  lung slice is liver, spleen, heart or diaphragm until it meets lung; that
  height is the diaphragm. Where consolidation sits on the diaphragm the run
  goes on to the top of the consolidation; such plateaus, narrower than
  ``DIAPHRAGM_WINDOW_MM``, are taken off by a flat grey opening of the height
  map. Tissue below the diaphragm is not lung.
* **Mediastinum**: on each axial row (z, y) that crosses both lungs, what
  lies between them is mediastinum; a row where one lung is consolidated
  takes that lung's medial edge from the nearest slice whose same row has it.

What remains, between ``GAS_MEDIAN_HU`` and the top of the consolidation
band, thicker than ``MIN_THICKNESS_MM`` (so the pleura and partial volume at
the chest wall are not added), in pieces of at least ``MIN_PIECE_ML`` that touch
aerated lung and reach the chest wall (the liver dome or the heart, seen from
above, are ringed by aerated lung instead), within ``MAX_REACH_MM`` of it, joins the lung on the side of the nearest aerated lung. The lesion
finder then classes it by the lesion bands like any other lung.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from CovidCTAnalysisLib.constants import CONSOLIDATION_BAND_HU, DENSE_LUNG_MAX_HU, LEFT_LUNG, RIGHT_LUNG

BONE_MIN_HU = 150.0
RIB_SEARCH_MM = 20.0  # ribs lie within this distance of aerated lung; arms and scapulae further out
CHEST_WALL_MM = 6.0  # intercostal muscle and pleura inside the rib hull
BONE_MARGIN_MM = 4.0
DIAPHRAGM_WINDOW_MM = 80.0  # consolidation plateaus narrower than this are taken off the diaphragm height
MIN_THICKNESS_MM = 6.0  # radius of the opening: thinner dense rims are pleura or partial volume
MAX_REACH_MM = 60.0  # a lobe's depth
WALL_CONTACT_VOXELS = 2
MIN_PIECE_ML = 30.0  # a consolidated segment or lobe; smaller dense pieces stay out
GAS_MEDIAN_HU = -950.0


def _hull_mask(points_yx: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Filled convex hull of 2-D points on a (y, x) grid (empty if the points are degenerate).

    Row by row: each hull facet a*y + b*x + c <= 0 bounds x from one side.
    """
    out = np.zeros(shape, dtype=bool)
    if len(points_yx) < 3:
        return out
    try:
        hull = ConvexHull(points_yx)
    except QhullError:
        return out
    a, b, c = hull.equations.T
    y0, y1 = int(np.ceil(points_yx[:, 0].min())), int(np.floor(points_yx[:, 0].max())) + 1
    y = np.arange(y0, y1, dtype=float)[:, None]
    rhs = -(a * y + c) + 1e-6  # b * x <= rhs
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rhs / b
    lo = np.where(b < 0, bound, -np.inf).max(axis=1)
    hi = np.where(b > 0, bound, np.inf).min(axis=1)
    x = np.arange(shape[1], dtype=float)[None, :]
    out[y0:y1] = (x >= lo[:, None]) & (x <= hi[:, None])
    return out


def _row_ends(mask: np.ndarray) -> np.ndarray:
    """(y, x) of the first and last set pixel of every row of a 2-D mask: they span its convex hull."""
    rows = np.nonzero(mask.any(axis=1))[0]
    first = np.argmax(mask[rows], axis=1)
    last = mask.shape[1] - 1 - np.argmax(mask[rows, ::-1], axis=1)
    return np.concatenate([np.column_stack([rows, first]), np.column_stack([rows, last])]).astype(float)


def rib_bone(hu: np.ndarray, body: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Bone within ``RIB_SEARCH_MM`` of the lung: ribs, spine and sternum, not the arms or shoulder blades."""
    sx, sy, sz = spacing
    near = ndi.distance_transform_edt(~lung, sampling=(sz, sy, sx)) <= RIB_SEARCH_MM
    return body & (hu > BONE_MIN_HU) & near


def rib_hull(bone: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Per axial slice that holds lung, the filled convex hull of the rib bone and the lung (bool, z, y, x)."""
    hull = np.zeros(lung.shape, dtype=bool)
    for z in np.nonzero(lung.any(axis=(1, 2)))[0]:
        hull[z] = _hull_mask(_row_ends(bone[z] | lung[z]), lung.shape[1:])
    return hull


def rib_cavity(hu: np.ndarray, body: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Inside of the rib cage on the slices that hold lung (bool, z, y, x)."""
    sx = spacing[0]
    bone = rib_bone(hu, body, lung, spacing)
    cavity = rib_hull(bone, lung)
    # In from the hull (in-plane only) and away from the bone itself (binary morphology: cheaper than
    # distance maps on a whole chest, and the margins are only a few voxels).
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    wall = ndi.binary_erosion(cavity, in_plane, iterations=max(1, int(round(CHEST_WALL_MM / sx))))
    off_bone = ~ndi.binary_dilation(bone, iterations=max(1, int(round(BONE_MARGIN_MM / sx))))
    return wall & off_bone


def below_diaphragm(tissue: np.ndarray, lung: np.ndarray, body: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """Voxels under the diaphragm surface estimated column by column (bool, z, y, x)."""
    out = np.zeros(lung.shape, dtype=bool)
    slices = np.nonzero(lung.any(axis=(1, 2)))[0]
    if slices.size == 0:
        return out
    z_lo = int(slices[0])
    run = np.logical_and.accumulate(tissue[z_lo:], axis=0)
    top = z_lo + run.sum(axis=0)  # first index above the run, per (y, x)
    nz = lung.shape[0]
    yy, xx = np.indices(top.shape)
    end = np.minimum(top, nz - 1)
    meets_lung = (top < nz) & lung[end, yy, xx]
    # A run that leaves the scan or the body without meeting lung (great vessels, a scan cut off at the
    # lung bases) stays out whole. One that ends in other air (bowel gas) says nothing: the nearest
    # column that meets lung gives its height.
    known = meets_lung | (top >= nz) | ~body[end, yy, xx]
    if not known.any():
        return out
    _, (iy, ix) = ndi.distance_transform_edt(~known, sampling=spacing_yx, return_indices=True)
    height = np.where(known, top, top[iy, ix])
    # Where aerated lung sits on a consolidation, the run ends at the top of the consolidation, not at the
    # diaphragm: such plateaus are narrower than the dome, and a flat opening takes them off (never off a
    # run that left the scan or the body).
    size = [max(1, int(round(DIAPHRAGM_WINDOW_MM / s))) for s in spacing_yx]
    height = np.maximum(ndi.grey_opening(height, size=size), np.where(known & ~meets_lung, top, 0))
    z = np.arange(nz)[:, None, None]
    return z < height[None, :, :]


def _fill_nearest_z(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(z, y) ``values`` with invalid cells taken from the nearest valid z of the same y (left as is if none)."""
    out = values.copy()
    z = np.arange(values.shape[0])
    for y in range(values.shape[1]):
        ok = np.nonzero(valid[:, y])[0]
        if ok.size:
            nearest = ok[np.abs(z[:, None] - ok[None, :]).argmin(axis=1)]
            out[:, y] = values[nearest, y]
    return out


def mediastinum_rows(labels: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxels between the two lungs, row by row (z, y) (bool, z, y, x).

    On a row that crosses both lungs the mediastinum runs from the right lung's
    medial edge to the left lung's; a row that misses one lung (consolidated,
    or beyond its front or back) takes that edge from the nearest row that has it.
    """
    nx = labels.shape[2]
    x = np.arange(nx)
    right = labels == RIGHT_LUNG  # the patient's right lies at low x (LPS)
    left = labels == LEFT_LUNG
    has_right, has_left = right.any(axis=2), left.any(axis=2)
    if not has_right.any() or not has_left.any():
        return np.zeros(labels.shape, dtype=bool)
    right_max = nx - 1 - np.argmax(right[:, :, ::-1], axis=2)
    left_min = np.argmax(left, axis=2)
    right_max = _fill_nearest_z(right_max, has_right)
    left_min = _fill_nearest_z(left_min, has_left)
    rows = (has_right.any(axis=0) & has_left.any(axis=0))[None, :, None]  # y rows where both lungs exist
    return rows & (x > right_max[..., None]) & (x < left_min[..., None])


def add_dense_lung(
    labels: np.ndarray, hu: np.ndarray, body: np.ndarray, airway: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """``labels`` (1 left, 2 right lung, z, y, x) with the dense lung next to them added to their side."""
    lung = labels > 0
    if not lung.any():
        return labels
    sx, sy, sz = spacing
    tissue = hu >= DENSE_LUNG_MAX_HU
    dense = (hu >= GAS_MEDIAN_HU) & (hu <= CONSOLIDATION_BAND_HU[1]) & ~lung & ~airway
    cavity = rib_cavity(hu, body, lung, spacing)
    dense &= cavity & ~below_diaphragm(tissue, lung, body, (sy, sx)) & ~mediastinum_rows(labels, spacing)
    # Air bronchograms: the gas in the bronchi of a consolidated lobe leaves holes and thin walls in the dense
    # band, which the opening then takes apart. Closing them in each axial slice keeps the lobe whole (pneumonia
    # phantoms 100-104: 68/42/61/77/4 -> 70/53/62/81/4 % of the consolidation found; a 4 mm opening would find
    # 74-84 % on three more, but then took 12-22 mL of a normal phantom's chest wall in).
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    dense = ndi.binary_fill_holes(dense | ndi.binary_closing(dense, in_plane), in_plane)
    # Opening by a diamond of MIN_THICKNESS_MM (repeated 6-neighbour steps: cheap on a whole chest).
    steps = max(1, int(round(MIN_THICKNESS_MM / sx)))
    dense = ndi.binary_opening(dense, ndi.generate_binary_structure(3, 1), iterations=steps)
    distance, (iz, iy, ix) = ndi.distance_transform_edt(~lung, sampling=(sz, sy, sx), return_indices=True)
    dense &= distance <= MAX_REACH_MM
    # Consolidation fills the lung out to the ribs, whereas the dome of the liver or the heart seen from
    # above is ringed by aerated lung: only axial cross-sections that reach the chest wall stay.
    sections, n = ndi.label(dense, structure=in_plane)
    reach = ndi.binary_dilation(~cavity, structure=in_plane, iterations=WALL_CONTACT_VOXELS) & dense
    at_wall = np.zeros(n + 1, dtype=bool)
    at_wall[np.unique(sections[reach])] = True
    at_wall[0] = False
    dense = at_wall[sections]
    # Of those, large pieces that touch aerated lung: a consolidated segment or lobe, not the dependent
    # density, the pleura or a sliver of liver or heart next to the lung.
    pieces, n = ndi.label(dense)
    if n == 0:
        return labels
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(pieces[ndi.binary_dilation(lung) & dense])] = True
    keep &= np.bincount(pieces.ravel(), minlength=n + 1) * sx * sy * sz / 1000.0 >= MIN_PIECE_ML
    keep[0] = False
    dense = keep[pieces]
    if not dense.any():
        return labels
    out = labels.copy()
    out[dense] = labels[iz[dense], iy[dense], ix[dense]]
    return out
